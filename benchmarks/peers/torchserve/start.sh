#!/usr/bin/env bash
# Usage: start.sh PORT   (run setup.sh first)
# TorchServe in the foreground: inference API on 127.0.0.1:PORT, management PORT+1, metrics
# PORT+2, gRPC PORT+3/PORT+4 (all loopback). SIGTERM/SIGINT stop the Java frontend and its
# Python worker. Per-run state (the .mar, rendered config, logs, pid file, worker sockets) goes
# to .peers/torchserve/run-PORT/.
set -euo pipefail
PORT=${1:?usage: start.sh PORT}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PEER=$ROOT/.peers/torchserve
VENV=$PEER/venv
[ -x "$VENV/bin/torchserve" ] || { echo "torchserve/start.sh: run $HERE/setup.sh first" >&2; exit 1; }

RUN=$PEER/run-$PORT
rm -rf "$RUN"
mkdir -p "$RUN/tmp" "$RUN/logs" "$RUN/model-store"

# Mode (VISIONLOOP_PEER_MODE, see ../common.py): shipped = model-config.yaml as it is (the
# batching cap, TorchServe's other defaults); slo = the same plus clientTimeoutInMills = the
# SLO (VISIONLOOP_PEER_SLO_MS): TorchServe 0.12 drops a request still queued after that, and a
# late answer, without answering the client (see peer.json "knobs"). responseTimeout stays:
# whole seconds only, and its expiry restarts the worker.
MODE=${VISIONLOOP_PEER_MODE:-shipped}
SLO_MS=${VISIONLOOP_PEER_SLO_MS:-250}
cp "$HERE/model-config.yaml" "$RUN/model-config.yaml"
case $MODE in
    shipped) ;;
    slo) printf 'clientTimeoutInMills: %d\n' "$(printf '%.0f' "$SLO_MS")" >> "$RUN/model-config.yaml" ;;
    *) echo "torchserve/start.sh: VISIONLOOP_PEER_MODE must be shipped or slo, not $MODE" >&2; exit 2 ;;
esac
echo "torchserve/start.sh: mode=$MODE threads=${VISIONLOOP_THREADS:-2}; model config:" >&2
sed -e '/^#/d' -e 's/^/  /' "$RUN/model-config.yaml" >&2

# The .mar: handler + visionloop's shared peer code + batching config, rebuilt every start so
# it never goes stale against benchmarks/peers/common.py.
"$VENV/bin/torch-model-archiver" --model-name catdog --version 1.0 \
    --handler "$HERE/handler.py" --extra-files "$ROOT/benchmarks/peers/common.py" \
    --config-file "$RUN/model-config.yaml" --export-path "$RUN/model-store" --force

sed -e "s|@PORT@|$PORT|g" -e "s|@MGMT_PORT@|$((PORT + 1))|g" \
    -e "s|@METRICS_PORT@|$((PORT + 2))|g" -e "s|@GRPC_INF_PORT@|$((PORT + 3))|g" \
    -e "s|@GRPC_MGMT_PORT@|$((PORT + 4))|g" -e "s|@MODEL_STORE@|$RUN/model-store|g" \
    -e "s|@WORKER_PORT@|$((PORT + 10))|g" \
    "$HERE/config.properties" > "$RUN/config.properties"

# TMPDIR/TEMP: TorchServe's pid file and the worker's Unix socket; per run, so two servers
# (or a stale one) never collide. Logs to the run folder; cwd too (TorchServe writes there).
export TMPDIR=$RUN/tmp TEMP=$RUN/tmp LOG_LOCATION=$RUN/logs METRICS_LOCATION=$RUN/logs
export VISIONLOOP_THREADS=${VISIONLOOP_THREADS:-2}
export PATH=$VENV/bin:$PATH
cd "$RUN"

stop() {
    trap - TERM INT
    "$VENV/bin/torchserve" --stop --foreground >&2 || true
    kill "$ts_pid" 2>/dev/null || true
    wait "$ts_pid" 2>/dev/null || true
    exit 0
}
"$VENV/bin/torchserve" --start --foreground --ncs --disable-token-auth \
    --ts-config "$RUN/config.properties" --model-store "$RUN/model-store" &
ts_pid=$!
trap stop TERM INT
wait "$ts_pid"
