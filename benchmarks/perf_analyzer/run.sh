#!/usr/bin/env bash
# Triton's perf_analyzer against visionloop's Open Inference Protocol v2 endpoint, in one go.
#
#   benchmarks/perf_analyzer/run.sh [--quick] [--url HOST:PORT] [options] [-- perf_analyzer args]
#
# 1. Sets up, idempotently: .perf_analyzer/venv with tritonclient==2.51.0 (whose wheel bundles
#    the perf_analyzer binary; newer ones need a newer glibc) and nvidia-cuda-runtime-cu12
#    (libcudart.so.12, which the binary links), plus Debian's libb64-0d (apt, as root or sudo).
# 2. Writes perf_analyzer --input-data JSON: the sample photos in tests/data as JPEG (q90),
#    one BYTES element per request ("image_bytes", -b 1).
# 3. Unless --url is given, starts `visionloop serve` on a free 127.0.0.1 port and stops it at
#    the end.
# 4. Runs perf_analyzer over HTTP twice: --concurrency-range, then --request-rate-range, each
#    with --measurement-mode time_windows: per step 3 to --max-trials windows, until the last 3
#    agree within --stability percent (defaults: 2.5 s windows, 4 trials, so 7.5-10 s a step).
# 5. Writes CSVs (-f), console logs, /metrics scrapes, server log and summary.txt into
#    out/perf_analyzer/<UTC time>/ (and out/perf_analyzer/latest), and prints the summary table;
#    --json FILE also writes the summary as JSON (steps, server view, command, date, machine).
# --server-cpus / --pa-cpus pin the server and perf_analyzer (taskset -c), so the load generator
# does not take the server's CPU.
#
# Exit status: 0 if every perf_analyzer run succeeded, 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/benchmarks/perf_analyzer"
PA_VERSION="2.51.0"
PA_VENV="$ROOT/.perf_analyzer/venv"
PROJECT_PY="$ROOT/.venv/bin/python"
MODEL="catdog"

usage() {
    cat <<EOF
Usage: $0 [options] [-- extra perf_analyzer arguments]

  --quick                     short run: concurrency 1:8:7, rate 5:10:5, 1500 ms windows
  --url HOST:PORT             use an already running server (not started or stopped here)
  --concurrency-range S:E:T   default 1:8:1 (quick 1:8:7)
  --request-rate-range S:E:T  default 10:30:10 (quick 5:10:5), requests/s
  --window-ms N               measurement window (-p), default 2500 (quick 1500)
  --max-trials N              most windows per step (-r), default 4; a step ends as soon as
                              its last 3 windows are stable, so it takes 3 to N windows
  --stability PCT             -s, default 100: max/min of the last 3 windows' throughput
                              and of their average latency must stay within 1 + PCT/100
                              (perf_analyzer's own default, 10, rarely holds on a shared
                              2-core machine); an unstable step ends that range early
  --server-arg ARG            extra flag for 'visionloop serve' (repeatable),
                              e.g. --server-arg --max-delay-ms --server-arg 5
  --server-cpus LIST          run the server under taskset -c LIST (e.g. 0)
  --pa-cpus LIST              run perf_analyzer under taskset -c LIST (e.g. 1)
  --json FILE                 also write the summary as JSON to FILE
  --setup-only                install perf_analyzer and its libraries, then exit
  -h, --help                  this text
EOF
}

COMMAND="benchmarks/perf_analyzer/run.sh${*:+ $*}"
QUICK=0 URL="" CONC="" RATE="" WINDOW_MS="" TRIALS=4 STABILITY=100 SETUP_ONLY=0
SERVER_CPUS="" PA_CPUS="" JSON_OUT=""
SERVER_ARGS=() PA_ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --url) URL="${2:?--url needs HOST:PORT}"; shift ;;
        --concurrency-range) CONC="${2:?}"; shift ;;
        --request-rate-range) RATE="${2:?}"; shift ;;
        --window-ms) WINDOW_MS="${2:?}"; shift ;;
        --max-trials) TRIALS="${2:?}"; shift ;;
        --stability) STABILITY="${2:?}"; shift ;;
        --server-arg) SERVER_ARGS+=("${2:?}"); shift ;;
        --server-cpus) SERVER_CPUS="${2:?}"; shift ;;
        --pa-cpus) PA_CPUS="${2:?}"; shift ;;
        --json) JSON_OUT="$(realpath -m "${2:?}")"; shift ;;
        --setup-only) SETUP_ONLY=1 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; PA_ARGS=("$@"); break ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [[ $QUICK == 1 ]]; then
    : "${CONC:=1:8:7}" "${RATE:=5:10:5}" "${WINDOW_MS:=1500}"
else
    : "${CONC:=1:8:1}" "${RATE:=10:30:10}" "${WINDOW_MS:=2500}"
fi

log() { printf '\n== %s\n' "$*"; }

# --- 1. setup (idempotent) --------------------------------------------------------------------
setup() {
    local sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
        log "installing libb64-0d (apt)"
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq libb64-0d >/dev/null
    fi
    local marker="$PA_VENV/.installed-tritonclient-$PA_VERSION"
    if [[ ! -f $marker ]]; then
        log "creating $PA_VENV (tritonclient==$PA_VERSION, nvidia-cuda-runtime-cu12)"
        [[ -x $PA_VENV/bin/python ]] || "${PYTHON:-python3}" -m venv "$PA_VENV"
        "$PA_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "tritonclient==$PA_VERSION" "nvidia-cuda-runtime-cu12==12.*"
        touch "$marker"
    fi
    PA="$PA_VENV/bin/perf_analyzer"
    local cudart
    cudart="$(compgen -G "$PA_VENV/lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12" | head -n1 || true)"
    [[ -n $cudart ]] || { echo "libcudart.so.12 not found in $PA_VENV" >&2; exit 1; }
    LD_LIBRARY_PATH="$(dirname "$cudart")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
    "$PA" --version
}
setup
[[ $SETUP_ONLY == 0 ]] || exit 0
[[ -x $PROJECT_PY ]] || { echo "no project venv at $ROOT/.venv (run 'make serve' once)" >&2; exit 1; }
tools() { "$PROJECT_PY" "$HERE/pa_tools.py" "$@"; }

STARTED="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
RUN_DIR="$ROOT/out/perf_analyzer/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RUN_DIR"
ln -sfn "$(basename "$RUN_DIR")" "$ROOT/out/perf_analyzer/latest"

# --- 2. input data ----------------------------------------------------------------------------
log "input data: $RUN_DIR/input_data.json"
tools input-data --images "$ROOT/tests/data" --out "$RUN_DIR/input_data.json"

# --- 3. server --------------------------------------------------------------------------------
SERVER_PID=""
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

if [[ -n $URL ]]; then
    HOSTPORT="${URL#http://}"
    HOSTPORT="${HOSTPORT%/}"
else
    PORT="$(tools free-port)"
    HOSTPORT="127.0.0.1:$PORT"
    SERVE=()
    [[ -z $SERVER_CPUS ]] || SERVE=(taskset -c "$SERVER_CPUS")
    SERVE+=("$ROOT/.venv/bin/visionloop" serve)
    SERVE+=(--host 127.0.0.1 --port "$PORT" --log-level warning --max-queue 256 ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"})
    log "starting server: ${SERVE[*]}"
    "${SERVE[@]}" >"$RUN_DIR/server.log" 2>&1 &
    SERVER_PID=$!
fi
BASE="http://$HOSTPORT"
if ! tools wait-ready --url "$BASE" --timeout 120 ${SERVER_PID:+--pid "$SERVER_PID"}; then
    [[ -z $SERVER_PID ]] || tail -n 20 "$RUN_DIR/server.log" >&2
    exit 1
fi
if ! tools check --url "$BASE"; then
    echo "warning: perf_analyzer $PA_VERSION is expected to fail against this server" >&2
fi

# --- 4. perf_analyzer -------------------------------------------------------------------------
steps() { awk -F: '{s=$1; e=($2==""?$1:$2); t=($3==""?1:$3); print int((e-s)/t+1e-9)+1}' <<<"$1"; }
FAILED=0
run_pa() {
    local name=$1 range=$2; shift 2
    local limit=$(( $(steps "$range") * (TRIALS * WINDOW_MS / 1000 + 20) + 30 ))
    local pin=()
    [[ -z $PA_CPUS ]] || pin=(taskset -c "$PA_CPUS")
    local cmd=(${pin[@]+"${pin[@]}"} "$PA" -m "$MODEL" -u "$HOSTPORT" -i http -b 1
        --input-data "$RUN_DIR/input_data.json"
        --measurement-mode time_windows -p "$WINDOW_MS" -r "$TRIALS" -s "$STABILITY"
        -f "$RUN_DIR/$name.csv" "$@" ${PA_ARGS[@]+"${PA_ARGS[@]}"})
    log "$name: ${cmd[*]#"$PA_VENV/bin/"}"
    rm -f "$RUN_DIR/$name.csv"
    tools scrape --url "$BASE" --out "$RUN_DIR/$name.metrics.before" || true
    local rc=0
    { echo "+ ${cmd[*]}"; timeout "$limit" "${cmd[@]}" 2>&1; } | tee "$RUN_DIR/$name.log" \
        || rc=${PIPESTATUS[0]}
    tools scrape --url "$BASE" --out "$RUN_DIR/$name.metrics.after" || true
    if [[ $rc != 0 || ! -s $RUN_DIR/$name.csv ]]; then
        echo "perf_analyzer ($name) failed (exit $rc); see $RUN_DIR/$name.log" >&2
        FAILED=1
    fi
}
run_pa concurrency "$CONC" --concurrency-range "$CONC"
# Open loop: --async, so a slow answer does not hold back the next send.
run_pa request_rate "$RATE" --request-rate-range "$RATE" --async

# --- 5. summary -------------------------------------------------------------------------------
stop_server
log "summary ($RUN_DIR)"
SUMMARY=(summary --dir "$RUN_DIR")
if [[ -n $JSON_OUT ]]; then
    SUMMARY+=(--json "$JSON_OUT" --meta "command=$COMMAND" --meta "date=$STARTED"
        --meta "perf_analyzer=$PA_VERSION" --meta "concurrency_range=$CONC"
        --meta "request_rate_range=$RATE" --meta "window_ms=$WINDOW_MS"
        --meta "max_trials=$TRIALS" --meta "stability_pct=$STABILITY"
        --meta "server=${SERVE[*]-$URL}" --meta "server_cpus=$SERVER_CPUS" --meta "pa_cpus=$PA_CPUS")
fi
tools "${SUMMARY[@]}" concurrency request_rate || FAILED=1
exit "$FAILED"
