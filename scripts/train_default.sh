#!/usr/bin/env bash
# The default served model and its monotonic twin, trained one after the other at the same budget, then
# evaluated on chitchat test and DailyDialog test. Each run resumes where it stopped when started again.
#   bash scripts/train_default.sh [RUNS_DIR]          (default runs/default)
# About 40 minutes a run on two CPU cores; add --set train.device=cuda through EXTRA on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/default}
PY=${PY:-.venv/bin/python}
EXTRA=${EXTRA:-}
for kind in cyclical monotonic; do
    $PY -m training train --config "chat-$kind" --out "$RUNS/chat-$kind" $EXTRA
done
for kind in cyclical monotonic; do
    for corpus in chitchat dailydialog; do
        $PY -m training evaluate --bundle "$RUNS/chat-$kind/bundle" --split test \
            --set data.corpus=$corpus --set data.dir=../shared/data/$corpus \
            --out "$RUNS/chat-$kind/eval/$corpus-test.json" --samples "$RUNS/chat-$kind/eval/$corpus-test.jsonl"
    done
done
