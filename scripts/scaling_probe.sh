#!/usr/bin/env bash
# The scaling probe of the long run (docs/results/scaling-probe): three generator sizes, each trained for about
# 45 minutes of one CPU core on the chat-cyclical config (chitchat + DailyDialog, cyclical M = 4, R = 0.5,
# batch 64), one after the other, validation ELBO every 1/16 of a run; the report plots validation ELBO against
# the runs' CPU time and extrapolates it to the long run's budget.
#   cpu   the cpu preset (the shipped model's size)
#   mid   between the two: embeddings 160, utterance encoder 200, context 400, latent 128, decoder 320
#   zhao  Zhao et al.'s sizes (8,000 pieces, as the others)
# Steps per size: 45 minutes at the batches/s benchmarks/train_throughput.py measured at one thread (cpu 3.01,
# mid 1.84, zhao 1.14), less 10 % for the work beside it. A run stopped by SIGTERM checkpoints; the script
# started again resumes it and goes on with the next.
#   bash scripts/scaling_probe.sh [RUNS_DIR] [THREADS]      (default ~/runs/probe, 1 thread)
#   bash scripts/scaling_probe.sh --report [RUNS_DIR]       (the report only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
REPORT=0
[ "${1:-}" = --report ] && { REPORT=1; shift; }
RUNS=${1:-$HOME/runs/probe}
THREADS=${2:-1}
MID=(--set model.embed_dim=160 --set model.utt_hidden=200 --set model.ctx_hidden=400 --set model.latent_dim=128
     --set model.dec_hidden=320 --set model.bow_hidden=320 --set model.prior_hidden=256)
probe() {  # name, steps, overrides...
    local name=$1 steps=$2; shift 2
    [ -f "$RUNS/$name/bundle/manifest.json" ] && return 0
    $PY -m training train --config chat-cyclical --out "$RUNS/$name" --set name="probe-$name" \
        --set train.steps="$steps" --set train.eval_every=$((steps / 16)) --set train.ckpt_every=$((steps / 12)) \
        --set schedule.warmup_steps=$((steps / 4)) --set train.num_threads="$THREADS" "$@"
}
if [ $REPORT = 0 ]; then
    probe cpu 7000 --set model.preset=cpu
    probe zhao 2760 --set model.preset=zhao
    probe mid 4470 --set model.preset=cpu "${MID[@]}"
fi
$PY -m training scaling "$RUNS"/cpu "$RUNS"/mid "$RUNS"/zhao --out docs/results/scaling-probe
