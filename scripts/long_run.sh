#!/usr/bin/env bash
# The long run of the reply-quality work (docs/results/long-run): the chosen generator (training/configs/
# chat-long.toml, sized by the scaling probe, docs/results/scaling-probe) trained for at least 12 hours of the
# two cores over many sessions. Its folder lives outside the work tree, so a fresh clone does not lose it; a
# run stopped by SIGTERM (or killed) resumes exactly when the script is started again.
#   bash scripts/long_run.sh [THREADS]     start or resume (default 1 thread: 2 when nothing else runs)
#   bash scripts/long_run.sh --report      the run's whole metrics history and curves into docs/results/long-run
# RUN=DIR picks another folder (default ~/runs/long). To pause it (for benchmarks, the whole test suite, the end of
# a session): pkill -TERM -f 'training train --config chat-long' : it finishes the step, writes a checkpoint and
# exits 143; the note of the session says its step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${RUN:-$HOME/runs/long}
OUT=docs/results/long-run
if [ "${1:-}" = --report ]; then
    mkdir -p "$OUT"
    cp "$RUN/metrics.jsonl" "$RUN/config.json" "$OUT/"
    $PY -m training compare "$RUN" --out "$OUT" --title "The long run: chat-long" \
        --notes "Every logged step over every resume (cpu_s and wall_s count the training process's time)."
    exit 0
fi
THREADS=${1:-1}
exec $PY -m training train --config chat-long --out "$RUN" --set train.num_threads="$THREADS"
