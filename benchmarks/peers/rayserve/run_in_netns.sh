#!/usr/bin/env bash
# Usage: run_in_netns.sh PORT -- COMMAND [ARGS...]
# Runs the Ray Serve peer and COMMAND together in a private network namespace (only loopback,
# so Ray's all-interfaces listeners reach nothing) and a private PID namespace (so no Ray
# process outlives it): brings lo up, starts start.sh PORT, waits until GET /ready on
# 127.0.0.1:PORT answers 200, runs COMMAND (a client or load generator for
# http://127.0.0.1:PORT/predict), stops Ray, exits with COMMAND's status (125: the server never
# became ready). SIGTERM/SIGINT stop COMMAND and Ray gracefully (exit 143).
# Env: RAYSERVE_READY_TIMEOUT (s, default 300); RAYSERVE_LOG (server output, default
# .peers/rayserve/server-PORT.log, "-" = stderr). Needs root (unshare).
set -euo pipefail
usage() { echo "usage: run_in_netns.sh PORT -- COMMAND [ARGS...]" >&2; exit 2; }
[ $# -ge 3 ] && [ "$2" = "--" ] || usage
PORT=$1
shift 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
VENV=$ROOT/.peers/rayserve/venv
[ -x "$VENV/bin/python" ] || { echo "run_in_netns.sh: run $HERE/setup.sh first" >&2; exit 2; }

if [ "${_RAYSERVE_IN_NETNS:-}" != 1 ]; then
    # Outside: unshare blocks SIGTERM while it waits, so forward TERM/INT to the namespace's
    # init (the inner copy of this script). --kill-child: should unshare itself be killed, the
    # kernel kills everything left in the namespace.
    command -v unshare >/dev/null || { echo "run_in_netns.sh: unshare not found" >&2; exit 2; }
    unshare --net --pid --fork --kill-child --mount-proc \
        env _RAYSERVE_IN_NETNS=1 bash "$HERE/run_in_netns.sh" "$PORT" -- "$@" <&0 &
    ns=$!
    forward() {
        local inner
        inner=$(cat "/proc/$ns/task/$ns/children" 2>/dev/null || true)
        [ -n "$inner" ] && kill -TERM $inner 2>/dev/null || true
    }
    trap forward TERM INT
    while true; do
        set +e
        wait "$ns"
        rc=$?
        set -e
        kill -0 "$ns" 2>/dev/null || break  # else: wait was interrupted by a signal
    done
    exit "$rc"
fi

# Inside the namespace (this shell is PID 1 there).
ip link set lo up
LOG=${RAYSERVE_LOG:-$ROOT/.peers/rayserve/server-$PORT.log}
if [ "$LOG" = "-" ]; then
    "$HERE/start.sh" "$PORT" >&2 </dev/null &
else
    mkdir -p "$(dirname "$LOG")"
    "$HERE/start.sh" "$PORT" >"$LOG" 2>&1 </dev/null &
fi
server=$!
child=

stop_server() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server" 2>/dev/null || true
        for _ in $(seq 1 60); do kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$server" 2>/dev/null || true
    fi
    wait "$server" 2>/dev/null || true
}
on_signal() {
    trap - TERM INT
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
    stop_server
    exit 143
}
trap on_signal TERM INT

# Children run in the background and are waited for, so that signals are handled at once.
t0=$(date +%s%N)
"$VENV/bin/python" - "$PORT" "${RAYSERVE_READY_TIMEOUT:-300}" "$server" <<'PY' &
import os, sys, time, urllib.request
port, timeout, pid = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("run_in_netns.sh: the Ray server exited before it was ready")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.5)
sys.exit(f"run_in_netns.sh: not ready after {timeout:.0f}s")
PY
child=$!
if ! wait "$child"; then
    child=
    [ "$LOG" != "-" ] && tail -n 40 "$LOG" >&2
    stop_server
    exit 125
fi
echo "run_in_netns.sh: rayserve ready on 127.0.0.1:$PORT after" \
     "$(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2

"$@" <&0 &
child=$!
set +e
wait "$child"
rc=$?
set -e
child=
stop_server
exit $rc
