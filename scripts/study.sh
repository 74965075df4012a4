#!/usr/bin/env bash
# The schedule study of docs/results/README.md on two CPU cores: cyclical against monotonic KL annealing at
# equal budget, three seeds, and the M / R ablations. Every run holds its last step's weights in bundle/
# (the equal-budget comparison) and its lowest-validation-ELBO weights in bundle-best/ (best-ELBO selection,
# beside it); each is evaluated on the first 2,000 contexts of the test split.
#   core      SwDA (kgCVAE as in Zhao et al.'s code, bag-of-words loss, topic and speaker metadata) and
#             BYU Chit-Chat (CVAE), the cpu preset, T = 2,000 steps of batch 30; cyclical M = 4, R = 0.5;
#             monotonic W = 500 (one cycle's length); seeds 1, 2, 3
#   ablate    SwDA at T = 1,000, seed 1: M in {1, 2, 4, 8} at R = 0.5; R in {0.25, 0.75, 1.0} at M = 4;
#             constant beta = 1; monotonic W = 250
# Runs go two at a time with one torch thread each (two cores); a run that finished is skipped and one that
# stopped resumes from its checkpoint when the script is started again.
#   bash scripts/study.sh [RUNS_DIR]      (default runs/study); then the reports:
#   bash scripts/study.sh --report [RUNS_DIR]   (copies each run's record to docs/results/study-runs first)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PY

job() {  # run-dir config steps overrides...: train, then evaluate the last and the best-ELBO bundle
    local dir=$1 config=$2 steps=$3; shift 3
    local m=$((steps / 4))
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
    if [ ! -f "$dir/bundle/manifest.json" ]; then
        $PY -m training train --config "$config" --out "$dir" --set train.steps="$steps" \
            --set train.eval_every=$((steps / 4)) --set schedule.warmup_steps=$m --set train.export=last \
            --set train.export_best=true --set train.num_threads=1 --set train.device=cpu \
            --set train.valid_max_batches=60 --set train.log_every=100 "$@" > "$dir.log" 2>&1
    fi
    for which in bundle bundle-best; do
        local out=$dir/eval/test${which#bundle}.json
        [ -f "$out" ] || [ ! -d "$dir/$which" ] || $PY -m training evaluate --bundle "$dir/$which" --split test \
            --max-contexts 2000 --out "$out" >> "$dir.log" 2>&1
    done
    echo "$(date +%T) done $dir"
}
export -f job

if [ "${1:-}" = "--report" ]; then
    # Each run's record (config, metrics, test evaluations: a few KB) is kept in docs/results/study-runs, so the
    # reports rebuild from the repository without the run folders, and the grid can grow from session to session.
    RUNS=${2:-runs/study}
    REC=docs/results/study-runs
    for dir in "$RUNS"/core/*/ "$RUNS"/ablate/*/; do
        [ -f "$dir/eval/test.json" ] || continue
        rel=${dir#"$RUNS"/}; rel=${rel%/}
        mkdir -p "$REC/$rel/eval"
        cp "$dir/config.json" "$dir/metrics.jsonl" "$REC/$rel/"
        for f in "$dir"/eval/test*.json; do  # the bundle's path as the script names it, not this machine's
            sed "s#\"[^\"]*/$rel/bundle#\"runs/study/$rel/bundle#" "$f" > "$REC/$rel/eval/$(basename "$f")"
        done
    done
    for corpus in swda chitchat; do
        $PY -m training compare "$REC"/core/$corpus-{cyclical,monotonic}-s{1,2,3} --out docs/results/study-$corpus \
            --title "$corpus: cyclical vs monotonic at equal budget, 3 seeds (cpu preset, 2,000 steps)" \
            --notes-file docs/results/study-$corpus/notes.md
    done
    $PY -m training compare "$REC"/ablate/* --out docs/results/study-ablations --against cycles --against ratio \
        --title "SwDA ablations: cycles M, increasing proportion R, constant and monotonic beta (cpu preset, 1,000 steps)" \
        --notes-file docs/results/study-ablations/notes.md
    exit 0
fi

RUNS=${1:-runs/study}
mkdir -p "$RUNS/core" "$RUNS/ablate"
{
    for seed in 1 2 3; do
        for corpus in swda chitchat; do
            for kind in cyclical monotonic; do
                echo "$RUNS/core/$corpus-$kind-s$seed training/configs/$corpus-$kind.toml 2000" \
                    "--set model.preset=cpu --set train.seed=$seed --set name=$corpus-$kind"
            done
        done
    done
    A="training/configs/swda-cyclical.toml 1000 --set model.preset=cpu"
    for m in 1 2 4 8; do echo "$RUNS/ablate/m$m-r50 $A --set schedule.cycles=$m --set name=swda-m$m-r50"; done
    for r in 25 75 100; do
        echo "$RUNS/ablate/m4-r$r $A --set schedule.ratio=0.$r --set name=swda-m4-r$r" | sed 's/0\.100/1.0/'
    done
    echo "$RUNS/ablate/constant $A --set schedule.kind=constant --set name=swda-constant"
    echo "$RUNS/ablate/monotonic $A --set schedule.kind=monotonic --set name=swda-monotonic"
} | xargs -P 2 -L 1 bash -c 'job "$@"' _
