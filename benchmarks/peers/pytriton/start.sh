#!/usr/bin/env bash
# Usage: start.sh PORT — PyTriton peer (HTTP v2 on 127.0.0.1:PORT, metrics on another free
# loopback port, gRPC off), in the foreground (exec: SIGTERM/SIGINT reach python, which stops
# the tritonserver child and the Python-backend stub).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
PORT="${1:?usage: start.sh PORT}"
PY="$ROOT/.peers/pytriton/venv/bin/python"
[[ -x "$PY" ]] || { echo "pytriton: no venv, run $HERE/setup.sh first" >&2; exit 1; }
# Triton's Python-backend stub links libpython3.X.so.1.0: make it the venv's own interpreter's
# (e.g. pyenv's), not Debian's /usr/lib one, whose Python differs from the venv's.
LIBDIR="$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
export LD_LIBRARY_PATH="$LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
# Triton's per-run workspace (model store, tritonserver copy), removed at stop.
export PYTRITON_HOME="$ROOT/.peers/pytriton/home"
exec "$PY" "$HERE/server.py" --host 127.0.0.1 --port "$PORT"
