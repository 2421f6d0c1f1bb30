#!/usr/bin/env bash
# docker/smoke.sh: build the CPU image and run a sweep across real containers, on a machine where no
# container registry can be reached (what CI runs; docs/cluster.md, "What was run for real").
#
#   docker/smoke.sh [--cold] [EMODB_DIR]        (as root; EMODB_DIR default: $DSL_EMODB, else ../shared/data/emodb)
#
# Phases, each timed:
#   install  apt-get install docker.io debootstrap docker-compose (only what is missing)
#   dockerd  a daemon of its own: no bridge, no iptables, state under $DSL_SMOKE_ROOT, socket in /run/dsl-smoke
#   base     docker pull $BASE_IMAGE; where that fails, a Debian bookworm root made with debootstrap
#   build    docker build -f docker/Dockerfile.cpu: torch from PyTorch's CPU index where it answers, else PyPI
#   up       docker-compose -f docker/compose.netns.yaml up -d: mlflow, ray-head, ray-worker-1, ray-worker-2
#   sweep    dsl-sweep sweep from the head container (--address, MLflow server, storage on the shared volume)
#   best     dsl-sweep best --register --address; dsl-sweep predict from the registered model, fresh container
#   fault    a second sweep; `docker kill` of ray-worker-2 once its trial has a checkpoint
# Every service listens on 127.0.0.1 of one private network namespace; nothing else is addressed.
# Without EmoDB it builds and checks the image and skips the cluster part, saying so.
#
# On every exit: compose down -v, the daemon it started stopped by its PID, leftover mounts unmounted.
# --cold (CI): a fresh state directory, deleted at the end (images and layer cache included); without
# it the image cache stays in $DSL_SMOKE_ROOT for the next run.
# Without root or apt-get it says why and exits 0, unless CI is set: then it fails.
#
# Environment: DSL_SMOKE_ROOT (default /var/tmp/dsl-smoke), BASE_IMAGE (default python:3.11-slim-bookworm),
# TORCH_INDEX_URL (default PyTorch's CPU index), DEBIAN_MIRROR (for debootstrap), DSL_EMODB.
set -euo pipefail
cd "$(dirname "$0")/.."

COLD=0
EMODB="${DSL_EMODB:-../shared/data/emodb}"
for arg in "$@"; do
    case "$arg" in
        --cold) COLD=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "docker/smoke.sh: unknown option $arg" >&2; exit 2 ;;
        *) EMODB="$arg" ;;
    esac
done

ROOT="${DSL_SMOKE_ROOT:-/var/tmp/dsl-smoke}"
RUN_DIR=/run/dsl-smoke # short: the daemon's unix sockets live under its exec root
SOCK="$RUN_DIR/docker.sock"
PROJECT=dslsmoke
IMAGE=dsl-sweeps:cpu
LOCAL_BASE=dsl-sweeps-base:bookworm
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
COMPOSE_FILE=docker/compose.netns.yaml
GCS=127.0.0.1:6379
export DOCKER_HOST="unix://$SOCK" DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

DOCKERD_PID=""
PASSED=0
FAILED=0
SUMMARY=()
LOGS="$ROOT/logs"

say() { echo "[smoke] $*"; }
phase_start() { PHASE="$1"; PHASE_T0=$(date +%s); say "== $1: $2"; }
phase_end() {
    local s=$(($(date +%s) - PHASE_T0))
    SUMMARY+=("$(printf '%-8s %5d s  %s' "$PHASE" "$s" "${1:-}")")
    say "$PHASE done in $s s${1:+ ($1)}"
}
pass() { PASSED=$((PASSED + 1)); say "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); say "FAIL $*"; exit 1; }
skip_or_fail() { # a prerequisite is missing: fail under CI, else explain and stop with 0
    if [ -n "${CI:-}" ]; then fail "$1 (CI is set, so this is an error)"; fi
    say "skipped: $1"
    exit 0
}

compose() { DSL_DATA_DIR="${DATA_DIR:-/nonexistent}" docker-compose -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
cid() { compose ps -q "$1"; }
in_head() { docker exec -e DSL_PROGRESS=0 "$(cid ray-head)" "$@"; }

stop_daemon() { # the dockerd this script started (or an earlier run of it left), by its PID
    local pid="$1"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$pid" 2>/dev/null || true
    # its managed containerd, should dockerd have died without stopping it
    local cpid
    cpid=$(cat "$RUN_DIR/exec/containerd/containerd.pid" 2>/dev/null || true)
    if [ -n "$cpid" ] && grep -qs "$RUN_DIR" "/proc/$cpid/cmdline"; then kill -TERM "$cpid" 2>/dev/null || true; fi
    # leftover mounts (nsfs, overlay, shm) under its directories, deepest first
    awk -v a="$RUN_DIR" -v b="$ROOT" 'index($2, a) == 1 || index($2, b) == 1 { print $2 }' /proc/mounts |
        sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    if [ -n "$DOCKERD_PID" ]; then
        if docker info >/dev/null 2>&1; then
            compose down -v --remove-orphans -t 5 >/dev/null 2>&1
            docker ps -aq | xargs -r docker rm -f >/dev/null 2>&1
            docker volume ls -q | xargs -r docker volume rm -f >/dev/null 2>&1
        fi
        stop_daemon "$DOCKERD_PID"
        say "stopped dockerd (PID $DOCKERD_PID); containers and volumes removed"
    fi
    if [ "$COLD" = 1 ] && [ -d "$ROOT" ]; then
        rm -rf "$ROOT" && say "removed $ROOT (--cold)"
    fi
    if [ ${#SUMMARY[@]} -gt 0 ]; then
        say "phase times:"
        printf '[smoke]   %s\n' "${SUMMARY[@]}"
    fi
    [ "$rc" != 0 ] && [ "$FAILED" = 0 ] && FAILED=1 # an unexpected error is a failure too
    echo "smoke: $PASSED passed, $FAILED failed"
    exit "$rc"
}

# --------------------------------------------------------------------------- prerequisites
[ "$(id -u)" = 0 ] || skip_or_fail "docker/smoke.sh needs root (it installs packages and runs its own dockerd)"
command -v apt-get >/dev/null || skip_or_fail "docker/smoke.sh needs apt-get (Debian/Ubuntu) to install docker.io"
trap cleanup EXIT
trap 'exit 130' INT TERM
T_START=$(date +%s)

# An earlier run that was killed may have left its daemon: stop it (by the PID it recorded), start afresh.
if [ -f "$RUN_DIR/dockerd.pid" ]; then
    old=$(cat "$RUN_DIR/dockerd.pid")
    if grep -qs "$RUN_DIR" "/proc/$old/cmdline"; then say "stopping the dockerd an earlier run left (PID $old)"; stop_daemon "$old"; fi
fi
if [ "$COLD" = 1 ]; then rm -rf "$ROOT"; fi
rm -rf "$RUN_DIR"
mkdir -p "$ROOT" "$RUN_DIR" "$LOGS"

phase_start install "docker.io, debootstrap, docker-compose from apt"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v docker-compose >/dev/null || need+=(docker-compose)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"$LOGS/apt.log" 2>&1 ||
        { tail -20 "$LOGS/apt.log"; fail "apt-get install ${need[*]}"; }
fi
phase_end "${need[*]:-nothing missing}"

phase_start dockerd "--bridge=none --iptables=false --ip6tables=false --ip-masq=false"
dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --data-root "$ROOT/docker" --exec-root "$RUN_DIR/exec" -H "unix://$SOCK" -p "$RUN_DIR/dockerd.pid" \
    >"$LOGS/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info >/dev/null 2>&1 || { tail -20 "$LOGS/dockerd.log"; fail "dockerd did not answer on $SOCK"; }
say "dockerd $(docker version -f '{{.Server.Version}}') PID $DOCKERD_PID, networks: $(docker network ls --format '{{.Name}}' | tr '\n' ' ')"
phase_end "PID $DOCKERD_PID"

# --------------------------------------------------------------------------- images
phase_start base "$BASE_IMAGE, else a local Debian bookworm base"
if timeout 60 docker pull -q "$BASE_IMAGE" >"$LOGS/pull.log" 2>&1; then
    base="$BASE_IMAGE"
    phase_end "pulled $BASE_IMAGE"
elif docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    base="$LOCAL_BASE"
    say "cannot pull $BASE_IMAGE: $(tail -1 "$LOGS/pull.log" | cut -c1-150)"
    phase_end "no registry; $LOCAL_BASE from an earlier run"
else
    say "cannot pull $BASE_IMAGE: $(tail -1 "$LOGS/pull.log" | cut -c1-150)"
    say "making $LOCAL_BASE: debootstrap --variant=minbase bookworm from $DEBIAN_MIRROR"
    rootfs="$ROOT/rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        "$DEBIAN_MIRROR" >"$LOGS/debootstrap.log" 2>&1 || { tail -20 "$LOGS/debootstrap.log"; fail "debootstrap"; }
    # This machine's own certificate authorities (a TLS-inspecting proxy signs PyPI's certificate here).
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["bash"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
    base="$LOCAL_BASE"
    phase_end "debootstrap + docker import, $(docker image inspect -f '{{.Size}}' "$LOCAL_BASE" | awk '{printf "%.2f GB", $1/1e9}')"
fi

torch_note="PyTorch's CPU index"
if ! curl -sf -m 15 -o /dev/null "$TORCH_INDEX_URL/torch/"; then
    say "$TORCH_INDEX_URL does not answer: torch from PyPI instead (its CUDA build: a larger image)"
    TORCH_INDEX_URL=https://pypi.org/simple
    torch_note="PyPI (CUDA build)"
fi
phase_start build "docker build -f docker/Dockerfile.cpu -t $IMAGE . (BASE_IMAGE=$base, torch from $torch_note)"
steps() { # the build's FROM/RUN/COPY steps as they start, with the seconds since the build began
    local line
    while IFS= read -r line; do
        case "$line" in "Step "*" : "FROM* | "Step "*" : "RUN* | "Step "*" : "COPY*) echo "  [+$(($(date +%s) - PHASE_T0)) s] ${line:0:100}" ;; esac
    done
}
docker build --network host -f docker/Dockerfile.cpu -t "$IMAGE" \
    --build-arg "BASE_IMAGE=$base" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL" . 2>&1 |
    tee "$LOGS/build.log" | steps || { tail -40 "$LOGS/build.log"; fail "docker build"; }
size=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1/1e9}')
phase_end "$IMAGE: $size, torch from $torch_note"
say "image $IMAGE size $size (torch from $torch_note)"
docker run --rm --network none "$IMAGE" bash -c '
    set -e
    for p in .git docs .ci; do test ! -e "/home/ray/app/$p" || { echo "/home/ray/app/$p is in the image"; exit 1; }; done
    test "$(id -u)" = 1000
    dsl-sweep --help >/dev/null
    python -c "import torch, torchvision, timm, ray, mlflow, optuna, dsl, trainables, sweeps; print(\"torch\", torch.__version__, \"ray\", ray.__version__, \"mlflow\", mlflow.__version__)"
' || fail "the image: .git/docs left in, or an import fails"
pass "image $IMAGE built ($size): no .git, runs as uid 1000, dsl-sweep and its imports work"

# --------------------------------------------------------------------------- the cluster
if ! compgen -G "$EMODB/*.wav" >/dev/null && ! compgen -G "$EMODB/wav/*.wav" >/dev/null; then
    say "skipped the cluster part: no EmoDB at $EMODB (give its folder as the argument, or set DSL_EMODB)"
    exit 0
fi
EMODB=$(realpath "$EMODB")
DATA_DIR=$(dirname "$EMODB")
CORPUS="/data/$(basename "$EMODB")"
WAV=$(cd "$EMODB" && find . -name '*.wav' | sort | sed -n 1p) # (head would end sort by SIGPIPE: pipefail)
WAV="$CORPUS/${WAV#./}"

python3 docker/compose_netns.py --check || fail "$COMPOSE_FILE is out of date with docker/compose.yaml"
phase_start up "docker-compose -f $COMPOSE_FILE up -d (data: $DATA_DIR -> /data, read-only)"
compose up -d 2>&1 | sed -u 's/^/  /'
# Wait for the head and both workers. Under load a Ray node can miss its 30 s start-up deadline and
# exit; compose restarts it (restart: unless-stopped), so a failed look is retried until the deadline.
up_deadline=$(($(date +%s) + 420))
until in_head python /app/docker/smoke_checks.py nodes --workers 2 --timeout 60 2>/dev/null; do
    if [ "$(date +%s)" -gt "$up_deadline" ]; then compose logs --tail 40; fail "the Ray cluster did not come up"; fi
    say "waiting for the Ray nodes (restarts: $(compose ps -q | xargs docker inspect -f '{{.Name}}={{.RestartCount}}' | tr '\n' ' '))"
    sleep 5
done
phase_end "mlflow + ray-head + 2 workers"
pass "compose cluster up: Ray head and 2 workers alive, MLflow healthy"

phase_start sweep "dsl-sweep sweep docker/smoke_sweep.yaml from the head, --address $GCS"
in_head dsl-sweep sweep /app/docker/smoke_sweep.yaml --address "$GCS" --storage-path /results --data "$CORPUS" \
    2>&1 | tee "$LOGS/sweep.log" || fail "dsl-sweep sweep exited non-zero"
phase_end "4 trials"
say "MLflow check (from the head, http://127.0.0.1:5000):"
in_head python /app/docker/smoke_checks.py sweep docker_smoke --trials 4 --spread ||
    fail "MLflow: the sweep's runs are not as expected"
pass "sweep: every trial one FINISHED run with its artifacts, every iteration once, trials on both workers"

phase_start best "dsl-sweep best --register --address $GCS; predict in a fresh container"
in_head dsl-sweep best docker_smoke --no-reeval --register --address "$GCS" --model-name docker_smoke \
    --out /results/docker_smoke_best.yaml 2>&1 | tail -5 || fail "dsl-sweep best --register exited non-zero"
in_head python /app/docker/smoke_checks.py model docker_smoke || fail "no model registered"
pass "best --register --address: model docker_smoke registered"
prediction=$(docker run --rm --network "container:$(cid mlflow)" -e MLFLOW_TRACKING_URI=http://127.0.0.1:5000 \
    -v "$EMODB:$CORPUS:ro" "$IMAGE" dsl-sweep predict models:/docker_smoke/1 "$WAV" 2>&1) ||
    { echo "$prediction" | tail -20; fail "dsl-sweep predict exited non-zero"; }
echo "$prediction" | grep -E "^$WAV: " | sed 's/^/  /'
grep -qE "^$WAV: (anger|boredom|disgust|fear|happiness|sadness|neutral) " <<<"$prediction" ||
    fail "dsl-sweep predict printed no emotion for $WAV"
phase_end "registered, predicted"
pass "predict from models:/docker_smoke/1 in a fresh container: a label for $WAV"

phase_start fault "a sweep with docker kill of ray-worker-2 mid-trial"
in_head dsl-sweep sweep /app/docker/smoke_fault_sweep.yaml --address "$GCS" --storage-path /results \
    --data "$CORPUS" >"$LOGS/fault.log" 2>&1 &
fault_pid=$!
killed=$(in_head python /app/docker/smoke_checks.py wait-step docker_smoke_fault --node ray-worker-2 --timeout 600) ||
    { kill "$fault_pid" 2>/dev/null; cat "$LOGS/fault.log"; fail "no trial reached a checkpoint on ray-worker-2"; }
say "$killed"
docker kill "$(cid ray-worker-2)" >/dev/null
say "docker kill ray-worker-2 at +$(($(date +%s) - PHASE_T0)) s"
fault_rc=0
wait "$fault_pid" || fault_rc=$?
# the sweep's own lines (Ray appends the dead node's raylet log to the driver's output: left in the file)
grep -vE '^[[:space:]]+\[(state-dump|[0-9]{4}-)|^[[:space:]]*$' "$LOGS/fault.log" || true
say "ray-worker-2 after the kill: $(docker inspect -f '{{.State.Status}}, restarts {{.RestartCount}}' "$(cid ray-worker-2)")"
[ "$fault_rc" = 0 ] || fail "the fault sweep exited with $fault_rc"
in_head python /app/docker/smoke_checks.py sweep docker_smoke_fault --trials 2 \
    --killed-trial "$(echo "$killed" | awk '{print $2}')" --killed-node "$(echo "$killed" | awk '{print $NF}')" ||
    fail "MLflow after the kill: the sweep's runs are not as expected"
phase_end "worker killed, trial retried"
pass "fault: ray-worker-2 killed mid-trial; every trial complete, one FINISHED run each, every iteration once"
say "total $(($(date +%s) - T_START)) s"
