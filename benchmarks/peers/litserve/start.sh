#!/usr/bin/env bash
# Usage: start.sh PORT — LitServe peer on 127.0.0.1:PORT, in the foreground. SIGTERM or SIGINT
# to this process (the python, thanks to exec) shuts LitServe down gracefully, workers included.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
PORT="${1:?usage: start.sh PORT}"
PY="$ROOT/.peers/litserve/venv/bin/python"
[[ -x "$PY" ]] || { echo "litserve: no venv, run $HERE/setup.sh first" >&2; exit 1; }
export PYTHONUNBUFFERED=1
exec "$PY" "$HERE/server.py" --host 127.0.0.1 --port "$PORT"
