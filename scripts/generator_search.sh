#!/usr/bin/env bash
# The generator search of docs/quality.md: what moves reply quality at equal budget on two CPU cores.
# Four runs of the chat-cyclical config (chitchat + DailyDialog, cyclical M = 4, R = 0.5), each about
# 14 minutes of two cores when nothing else runs, then the service's replies to 40 validation contexts of each
# corpus from each run and from the shipped model (the same config at 6,000 steps: the "longer" point).
#   base   the cpu preset, 2,000 steps
#   wdrop  base with word dropout 0.25 on the decoder input
#   vocab  base with a 4,000-piece vocabulary
#   zhao   Zhao et al.'s sizes (8,000 pieces), 830 steps: the same wall-clock time (0.985 against 2.37
#          batches/s measured by benchmarks/train_throughput.py on this machine)
# Each run resumes where it stopped when the script is started again.
#   bash scripts/generator_search.sh [RUNS_DIR]          (default runs/search)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/search}
PY=${PY:-.venv/bin/python}
OUT=docs/results/quality/search
COMMON=(--set train.steps=2000 --set train.eval_every=1000 --set schedule.warmup_steps=500)
train() {  # name, overrides...
    local name=$1; shift
    [ -f "$RUNS/$name/bundle/manifest.json" ] && return 0
    $PY -m training train --config chat-cyclical --out "$RUNS/$name" "$@"
}
train base "${COMMON[@]}"
train wdrop "${COMMON[@]}" --set model.word_dropout=0.25
train vocab "${COMMON[@]}" --set tokenizer.vocab_size=4000
train zhao --set train.steps=830 --set train.eval_every=415 --set schedule.warmup_steps=208 --set model.preset=zhao
mkdir -p "$OUT/metrics" "$OUT/samples"
for name in base wdrop vocab zhao long; do
    bundle=$RUNS/$name/bundle
    [ "$name" = long ] && bundle=model/pretrained/chat-cyclical
    for corpus in chitchat dailydialog; do
        $PY -m training quality --bundle "$bundle" --corpus $corpus --split valid --contexts 40 \
            --out "$OUT/metrics/$name-$corpus.json" --samples "$OUT/samples/$name-$corpus.jsonl"
    done
done
# The cheaper anti-LM (the reply bigram model, model/replylm.py) at 5, 3 and 2 candidates per reply, on the
# shipped model with its reply model added (the shipped bundle itself stays without it).
B=$RUNS/long-rlm
[ -d "$B" ] || { cp -r model/pretrained/chat-cyclical "$B" && $PY -m training lexicon --bundle "$B"; }
for corpus in chitchat dailydialog; do
    for sys in rlm-k5:5:0.5 rlm-k5-mmi1:5:1.0 rlm-k3:3:0.5 rlm-k2:2:0.5; do
        IFS=: read -r name k mmi <<< "$sys"
        $PY -m training quality --bundle "$B" --corpus $corpus --split valid --contexts 40 --anti-lm reply_lm \
            --candidates-per-reply "$k" --mmi-weight "$mmi" \
            --out "$OUT/metrics/$name-$corpus.json" --samples "$OUT/samples/$name-$corpus.jsonl"
    done
done
# Blind sheets (seeds 31/32: the search; 21/22: the anti-LM round), two raters each with ../shared/RATING.md, then
#   python -m training humaneval score --sheet $OUT/sheets/X.json --key $OUT/keys/X.json $OUT/ratings/X-r*.json
for corpus in chitchat dailydialog; do
    s=$([ $corpus = chitchat ] && echo 1 || echo 2)
    $PY -m training humaneval export base=$OUT/samples/base-$corpus.jsonl wdrop=$OUT/samples/wdrop-$corpus.jsonl \
        vocab=$OUT/samples/vocab-$corpus.jsonl zhao=$OUT/samples/zhao-$corpus.jsonl long=$OUT/samples/long-$corpus.jsonl \
        --contexts 40 --replies 5 --seed 3$s --out $OUT/sheets/search-$corpus.json --key $OUT/keys/search-$corpus.json
    $PY -m training humaneval export long=$OUT/samples/long-$corpus.jsonl rlm-k5=$OUT/samples/rlm-k5-$corpus.jsonl \
        rlm-k5-mmi1=$OUT/samples/rlm-k5-mmi1-$corpus.jsonl rlm-k3=$OUT/samples/rlm-k3-$corpus.jsonl \
        rlm-k2=$OUT/samples/rlm-k2-$corpus.jsonl \
        --contexts 40 --replies 5 --seed 2$s --out $OUT/sheets/decoding-$corpus.json --key $OUT/keys/decoding-$corpus.json
done
