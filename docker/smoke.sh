#!/usr/bin/env bash
# Container smoke test: build the API image, start it with `docker-compose up`, ask it for replies.
#
#   sudo docker/smoke.sh          # as root; CI runs it from .ci/run
#
# On machines without a Docker engine or a reachable registry (see ../shared/CONTAINERS.md) it uses Podman
# from Debian's packages as the engine and a base image made locally with debootstrap:
#   1. engine   install podman, runc, docker-compose, debootstrap if missing (apt); a containers.conf of
#               our own (CONTAINERS_CONF) with runc and no default ulimits, the system's is left alone
#   2. base     localhost/debian-python:bookworm (debootstrap minbase + python3, python3-venv), built once
#               and kept as a cache
#   3. build    `podman build --format docker` (keeps HEALTHCHECK) with the host's CA folder and the local
#               torch wheel folder ($PIP_FIND_LINKS) mounted read-only, tagged as compose's api image; the
#               dependencies and the project must be separate layers, the project's small and on top
#   (train)     with SMOKE_TRAIN=1: build the train target, `docker-compose run --rm train train --config
#               tiny.toml --out /runs/smoke` into the `runs` volume, then serve /runs/smoke/bundle
#   4. up       podman's Docker-compatible API on a socket of ours, `docker-compose up -d --no-build api`
#   5. checks   /readyz polled until 200; `podman healthcheck run` once; POST /respond returns n replies;
#               the server runs as a non-root user, as PID 1 (exec form); no dev tools in the image
#   6. stop     `docker-compose stop`: SIGTERM must end the server (exit 0) within the grace period
# On exit, failed or not: compose down -v, stop our podman service, remove the image tags and temp files.
# The base image and podman's layer cache stay, so a rerun skips debootstrap and the torch layer.
#
# Exits 0 with "SKIPPED: ..." only when podman cannot be installed; any other failure exits non-zero.
#
# Environment (all optional):
#   SMOKE_PORT=18000            host port the api is published on
#   SMOKE_BUNDLE=DIR            serve this bundle folder (mounted read-only) instead of the one in the image
#   SMOKE_TRAIN=1               also check the training path (about 2 more minutes; needs ../shared/data)
#   SMOKE_N=5                   replies to ask for
#   SMOKE_READY_TIMEOUT=300     seconds to wait for /readyz
#   SMOKE_KEEP_IMAGE=1          keep the built images afterwards
#   SMOKE_IMAGE=cvae-dialog:smoke, SMOKE_TRAIN_IMAGE=cvae-dialog-train:smoke
#                               image tags; tags of their own, so a user's :latest images are never touched
#   SMOKE_TORCH_INDEX_URL       index for the torch layer (default: PyPI when $PIP_FIND_LINKS holds the
#                               local CPU wheel, else PyTorch's CPU index https://download.pytorch.org/whl/cpu)
#   DEBIAN_MIRROR               mirror for debootstrap (default: the one apt's sources name)

set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${SMOKE_PORT:-18000}
N=${SMOKE_N:-5}
READY_TIMEOUT=${SMOKE_READY_TIMEOUT:-300}
IMAGE=${SMOKE_IMAGE:-cvae-dialog:smoke}
TRAIN_IMAGE=${SMOKE_TRAIN_IMAGE:-cvae-dialog-train:smoke}
PROJECT=cvae-dialog-smoke-$$
BASE_IMAGE=localhost/debian-python:bookworm
PKGS=(podman runc docker-compose debootstrap)

WORK=$(mktemp -d /tmp/cvae-dialog-smoke.XXXXXX)
SOCK=$WORK/podman.sock
SERVICE_PID=
COMPOSE_STARTED=
BUILT_IMAGES=()
SKIPPED=
BUNDLE_KIND=image
T_START=$(date +%s)
TIMINGS=()

log() { printf '[smoke %4ss] %s\n' "$(($(date +%s) - T_START))" "$*"; }
die() { log "FAIL: $*"; exit 1; }

PHASE= ; PHASE_T0=
phase() {  # phase NAME: close the running phase (record its time), open the next
    local now; now=$(date +%s)
    if [[ -n $PHASE ]]; then
        TIMINGS+=("$(printf '%-8s %5ss' "$PHASE" "$((now - PHASE_T0))")")
        log "phase $PHASE done in $((now - PHASE_T0))s"
    fi
    PHASE=$1; PHASE_T0=$now
    [[ -n $PHASE ]] && log "=== $PHASE"
    return 0
}

compose() { docker-compose -p "$PROJECT" -f "$ROOT/compose.yaml" "$@"; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $PHASE ]] && phase ""
    log "=== cleanup"
    if [[ -n $COMPOSE_STARTED ]]; then
        if ((rc != 0)); then
            log "api logs (last 80 lines):"
            compose logs --no-color --tail=80 api 2>&1 | sed 's/^/    /'
        fi
        compose down -v --remove-orphans --timeout 10 >"$WORK/down.log" 2>&1 \
            || { log "compose down failed:"; sed 's/^/    /' "$WORK/down.log"; }
    fi
    if [[ -n $SERVICE_PID ]]; then
        kill "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
    fi
    if [[ -z ${SMOKE_KEEP_IMAGE:-} ]]; then
        for img in "${BUILT_IMAGES[@]}"; do podman rmi "$img" >/dev/null 2>&1; done
    fi
    rm -rf "$WORK"
    local verdict="FAILED (exit $rc)"
    ((rc == 0)) && verdict=PASSED
    [[ -n $SKIPPED ]] && verdict="SKIPPED: $SKIPPED"
    log "$verdict in $(($(date +%s) - T_START))s"
    ((${#TIMINGS[@]})) && printf '    %s\n' "${TIMINGS[@]}"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------
phase engine
missing=()
for cmd in "${PKGS[@]}"; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian's packages"
    if ((EUID != 0)); then
        SKIPPED="${missing[*]} not installed and not running as root to install them"
        exit 0
    fi
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PKGS[@]}"; } \
            >"$WORK/apt.log" 2>&1; then
        tail -n 20 "$WORK/apt.log" | sed 's/^/    /'
        SKIPPED="podman could not be installed (apt-get failed, log above)"
        exit 0
    fi
fi
((EUID == 0)) || die "run as root: rootful podman, debootstrap and chroot need it"

# Our own containers.conf, so the system's stays as it is: runc (crun refuses hybrid cgroups here) and
# no default ulimits (the sandbox may not raise rlimits).
printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' >"$WORK/containers.conf"
export CONTAINERS_CONF=$WORK/containers.conf
log "$(podman --version), $(docker-compose --version)"

# ---------------------------------------------------------------------------------------------------
phase base
if podman image exists "$BASE_IMAGE"; then
    log "$BASE_IMAGE exists, reusing it"
else
    mirror=${DEBIAN_MIRROR:-$(grep -rhoE 'https?://[^ ]+/debian/?$' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -n1 || true)}
    mirror=${mirror:-http://deb.debian.org/debian}
    log "debootstrap bookworm from $mirror"
    rootfs=$WORK/rootfs
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -n 30 "$WORK/debootstrap.log"; die "debootstrap failed"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >"$WORK/import.log" 2>&1 \
        || { cat "$WORK/import.log"; die "podman import of the base image failed"; }
    rm -rf "$rootfs"
    podman run --rm "$BASE_IMAGE" python3 -c 'import venv, ssl' || die "$BASE_IMAGE has no working python3"
fi

# ---------------------------------------------------------------------------------------------------
phase build
build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
mounts=()
if [[ -n ${PIP_CERT:-} ]]; then
    # The index is reached through a proxy whose CA is in this bundle: the same path inside the build.
    certdir=$(dirname "$PIP_CERT")
    mounts+=(-v "$certdir:$certdir:ro")
    build_args+=(--build-arg "PIP_CERT=$PIP_CERT")
fi
pip_extra=
for d in ${PIP_FIND_LINKS:-}; do
    [[ -d $d ]] || continue
    mounts+=(-v "$d:$d:ro")
    pip_extra+=" --find-links $d"
done
if [[ -n $pip_extra ]]; then
    torch_index=${SMOKE_TORCH_INDEX_URL:-https://pypi.org/simple}
    build_args+=(--build-arg "PIP_EXTRA_ARGS=${pip_extra# }")
else
    torch_index=${SMOKE_TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
fi
build_args+=(--build-arg "TORCH_INDEX_URL=$torch_index")

build_image() {  # build_image TARGET TAG
    log "podman build --target $1 -t $2 (torch from $torch_index${pip_extra:+ and$pip_extra})"
    BUILT_IMAGES+=("$2")
    if ! podman build --format docker --network host --target "$1" "${mounts[@]}" "${build_args[@]}" \
            -t "$2" "$ROOT" >"$WORK/build-$1.log" 2>&1; then
        tail -n 60 "$WORK/build-$1.log" | sed 's/^/    /'
        die "image build failed (target $1)"
    fi
    local cached size
    cached=$(grep -c 'Using cache' "$WORK/build-$1.log" || true)
    size=$(podman image inspect "$2" --format '{{.Size}}' | awk '{printf "%.0f MB", $1 / 1e6}')
    log "built $2: $size, $cached steps from the layer cache"
    # Dependencies (torch) and the project in separate layers, the project's last and small, so that a code
    # change rebuilds and ships only it.
    podman history --format json "$2" >"$WORK/history-$1.json"
    python3 - "$WORK/history-$1.json" <<'EOF' | sed 's/^/    /' || die "image $2: the dependencies and the project must be separate layers, the project's small and on top"
import json, re, sys
layers = json.load(open(sys.argv[1]))  # the newest layer first
def find(dest):
    return next((i for i, e in enumerate(layers) if re.search(rf"COPY \S+ in {dest} *$", e.get("CreatedBy") or "")), None)
venv, proj = find("/opt/venv"), find("/opt/cvae-dialog")
if venv is None or proj is None:
    sys.exit("no COPY layer of /opt/venv or of /opt/cvae-dialog")
print(f"layers: dependencies {layers[venv]['size'] / 1e6:.0f} MB, project {layers[proj]['size'] / 1e6:.1f} MB on top")
if proj > venv:
    sys.exit("the project layer lies under the dependencies' layer")
if layers[proj]["size"] > 200e6:
    sys.exit("the project layer is over 200 MB: dependencies in it?")
EOF
}
build_image runtime "$IMAGE"

podman system service --time=0 "unix://$SOCK" >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 50); do [[ -S $SOCK ]] && break; sleep 0.2; done
[[ -S $SOCK ]] || { cat "$WORK/service.log"; die "podman system service did not open $SOCK"; }
export DOCKER_HOST=unix://$SOCK
export API_IMAGE=$IMAGE API_PORT=$PORT TRAIN_IMAGE=$TRAIN_IMAGE
unset BUNDLE_DIR DIALOG_BUNDLE DATA_DIR

# ---------------------------------------------------------------------------------------------------
if [[ -n ${SMOKE_TRAIN:-} ]]; then
    phase train
    # The documented retraining path: the train service writes a run into the `runs` volume, the api serves it.
    [[ -d $ROOT/../shared/data ]] || die "SMOKE_TRAIN needs the corpora in ../shared/data beside the checkout"
    export DATA_DIR=$ROOT/../shared/data  # unset, compose mounts an empty volume there
    build_image train "$TRAIN_IMAGE"
    COMPOSE_STARTED=1
    compose run --rm -T train train --config tiny.toml --out /runs/smoke >"$WORK/train.log" 2>&1 \
        || { tail -n 40 "$WORK/train.log" | sed 's/^/    /'; die "compose run train failed"; }
    grep -E 'exported|done:' "$WORK/train.log" | sed 's/^/    /'
    export DIALOG_BUNDLE=/runs/smoke/bundle
    BUNDLE_KIND=trained
fi

# ---------------------------------------------------------------------------------------------------
phase up
if [[ -n ${SMOKE_BUNDLE:-} ]]; then
    [[ -f $SMOKE_BUNDLE/manifest.json ]] || die "SMOKE_BUNDLE=$SMOKE_BUNDLE has no manifest.json"
    # A copy, readable by the container's non-root user whoever owns the original (safetensors writes
    # files 0600, so a bundle trained by root on the host would otherwise be unreadable in there).
    BUNDLE_DIR=$WORK/bundles
    mkdir -p "$BUNDLE_DIR"
    cp -r "$SMOKE_BUNDLE" "$BUNDLE_DIR/smoke"
    unreadable=$(find "$SMOKE_BUNDLE" -type f ! -perm -o+r | wc -l)
    ((unreadable == 0)) || log "warning: $unreadable file(s) of $SMOKE_BUNDLE are not world-readable; mounting a readable copy"
    chmod -R a+rX "$BUNDLE_DIR"
    DIALOG_BUNDLE=/bundles/smoke
    export BUNDLE_DIR DIALOG_BUNDLE
    BUNDLE_KIND=mounted
fi
if [[ $BUNDLE_KIND == image ]]; then
    compgen -G "$ROOT/model/pretrained/*/manifest.json" >/dev/null \
        || die "no default bundle under model/pretrained/ to serve: set SMOKE_BUNDLE=DIR or SMOKE_TRAIN=1"
fi
if [[ ! -d $ROOT/model/pretrained && -z ${BUNDLE_DIR:-} ]]; then
    # compose.yaml mounts ./model/pretrained at /bundles by default, and podman wants it to exist.
    export BUNDLE_DIR=$WORK/bundles
    mkdir -p "$BUNDLE_DIR" && chmod a+rx "$BUNDLE_DIR"
fi
log "serving ${DIALOG_BUNDLE:-the bundle inside the image} ($BUNDLE_KIND)"
COMPOSE_STARTED=1
compose up -d --no-build api 2>&1 | sed 's/^/    /'
CTR=$(compose ps -q api)
[[ -n $CTR ]] || die "compose started no api container"
log "container ${CTR:0:12} started"

# ---------------------------------------------------------------------------------------------------
phase ready
BASE_URL=http://127.0.0.1:$PORT
deadline=$(($(date +%s) + READY_TIMEOUT))
until python3 - "$BASE_URL/readyz" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
do
    state=$(podman inspect "$CTR" --format '{{.State.Status}} {{.RestartCount}}' 2>/dev/null || echo gone)
    [[ $state == "running 0" ]] || die "api container is '$state' (status, restarts) before /readyz answered 200"
    (($(date +%s) < deadline)) || die "/readyz did not answer 200 within ${READY_TIMEOUT}s"
    sleep 2
done
log "/readyz 200"

# ---------------------------------------------------------------------------------------------------
phase checks
# The image's HEALTHCHECK, run once by hand (no systemd here to run it on its timer).
podman healthcheck run "$CTR" | sed 's/^/    /' || die "podman healthcheck run failed"
log "healthcheck passes"

python3 - "$BASE_URL" "$N" "$BUNDLE_KIND" <<'EOF' || die "POST /respond"
import json, sys, urllib.request
base, n, shipped = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "image"

def respond(**extra):
    body = json.dumps({"context": ["hi there", "hello, how are you?"], "n": n, "seed": 1, **extra}).encode()
    req = urllib.request.Request(base + "/respond", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200, r.status
        out = json.load(r)
    replies = out["replies"]
    assert all(isinstance(x["text"], str) for x in replies), replies
    assert out["n_returned"] == len(replies), out
    return out, [x["text"] for x in replies]

# The documented request. Duplicates are dropped and redrawn a few times, so a toy bundle (SMOKE_BUNDLE,
# SMOKE_TRAIN) may return fewer distinct replies; the shipped model must return all n.
out, texts = respond()
for t in texts:
    print("    reply:", repr(t))
assert 1 <= len(texts) <= n, out
if shipped:
    assert len(texts) == n, f"asked for {n} replies, got {len(texts)}: {out}"
assert respond()[1] == texts, "same request and seed gave different replies"
# Without deduplication every non-empty sample comes back: exactly n from the shipped model (a toy bundle
# may still fall short when its samples stay empty after the redraw rounds).
out, texts = respond(strategy="sample", dedupe=False)
assert 1 <= len(texts) <= n and (len(texts) == n or not shipped), f"asked for {n} replies without dedupe: {out}"
EOF
log "POST /respond: replies as asked (n=$N); the same seed gives the same replies"

uid=$(podman exec "$CTR" id -u)
pid1=$(podman exec "$CTR" python -c '
uid = next(l.split()[1] for l in open("/proc/1/status") if l.startswith("Uid:"))
print(uid, open("/proc/1/cmdline").read().replace("\0", " ").strip())')
log "exec uid $uid; PID 1: uid ${pid1%% *}, cmd '${pid1#* }'"
[[ $uid != 0 && ${pid1%% *} != 0 ]] || die "the server runs as root"
[[ ${pid1#* } == "python -m app"* ]] || die "PID 1 is not the server (exec form): ${pid1#* }"
podman exec "$CTR" python -c '
import importlib.util as u, sys
dev = [m for m in ("pytest", "hypothesis", "schemathesis", "selenium", "matplotlib") if u.find_spec(m)]
sys.exit(f"dev/train packages in the runtime image: {dev}" if dev else 0)' || die "image has dev tools"
log "non-root, exec form, no dev tools"

# ---------------------------------------------------------------------------------------------------
phase stop
# SIGTERM to PID 1: the server must stop taking requests, drain and exit within the 30 s grace period.
t0=$(date +%s)
compose stop api 2>&1 | sed 's/^/    /'
code=$(podman inspect "$CTR" --format '{{.State.ExitCode}}')
log "stopped in $(($(date +%s) - t0))s, exit code $code"
# 0: the server drains and ends normally (143 would be a server killed by the signal it was asked to stop
# with; 137 one that ignored SIGTERM and was killed when the grace period ran out).
[[ $code == 0 ]] || die "server did not stop cleanly on SIGTERM (exit $code; 137 = killed after the grace period)"

phase ""
log "all checks passed"
