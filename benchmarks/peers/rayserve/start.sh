#!/usr/bin/env bash
# Usage: start.sh PORT   (run setup.sh first)
# Ray Serve in the foreground, HTTP proxy on 127.0.0.1:PORT (POST /predict, GET /ready).
# Ray's own servers listen on all interfaces: run this ONLY inside a private network namespace
# (run_in_netns.sh does that, or: unshare -n bash -c 'ip link set lo up; start.sh PORT & ...').
# SIGTERM/SIGINT: the driver shuts Serve and Ray down (and Ray's head processes die with it).
set -euo pipefail
PORT=${1:?usage: start.sh PORT}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
VENV=$ROOT/.peers/rayserve/venv
[ -x "$VENV/bin/python" ] || { echo "rayserve/start.sh: run $HERE/setup.sh first" >&2; exit 1; }

# Refuse to open Ray's 0.0.0.0 listeners on a real network: only loopback may be up here.
if [ -z "${RAYSERVE_ALLOW_HOST_NETWORK:-}" ] && command -v ip >/dev/null \
   && ip -o link show up 2>/dev/null | awk -F': ' '{print $2}' | grep -qv '^lo$'; then
    echo "rayserve/start.sh: network interfaces other than lo are up; run inside a private" \
         "network namespace (see run_in_netns.sh)" >&2
    exit 2
fi

# Short temp dir: Ray's Unix socket paths live under it (108-byte limit).
TMP=/tmp/visionloop-rayserve-$PORT
rm -rf "$TMP"
mkdir -p "$TMP"

export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_DISABLE_IMPORT_WARNING=1
export VISIONLOOP_THREADS=${VISIONLOOP_THREADS:-2}
export PYTHONPATH=$HERE/..${PYTHONPATH:+:$PYTHONPATH}
exec "$VENV/bin/python" "$HERE/serve_app.py" --port "$PORT" --temp-dir "$TMP"
