#!/usr/bin/env bash
# The default served model and its monotonic twin, trained one after the other at the same budget, then
# evaluated on chitchat test and DailyDialog test. Each run resumes where it stopped when started again.
#   bash scripts/train_default.sh [RUNS_DIR]          (default runs/default)
# About 45 minutes a run on two CPU cores when nothing else runs; add --set train.device=cuda through EXTRA on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/default}
PY=${PY:-.venv/bin/python}
EXTRA=${EXTRA:-}
for kind in cyclical monotonic; do
    $PY -m training train --config "chat-$kind" --out "$RUNS/chat-$kind" $EXTRA
done
# test metrics of both (posterior metrics over the whole split, sampled replies of the first 300 contexts)
mkdir -p docs/results/quality/twin
for kind in cyclical monotonic; do
    for corpus in chitchat dailydialog; do
        $PY -m training evaluate --bundle "$RUNS/chat-$kind/bundle" --split test \
            --set data.corpus=$corpus --set data.dir=../shared/data/$corpus --max-contexts 300 \
            --out "docs/results/quality/twin/$kind-$corpus-test.json"
    done
done
# the decoding lexicon (the run exports it; an older run's bundle gets it here), then the shipped copy
$PY -m training lexicon --bundle "$RUNS/chat-cyclical/bundle" --min-count 20
# cp "$RUNS/chat-cyclical/bundle/"* model/pretrained/chat-cyclical/   # to ship a retrained model
