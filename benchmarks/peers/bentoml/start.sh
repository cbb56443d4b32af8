#!/usr/bin/env bash
# Usage: start.sh PORT — BentoML peer on 127.0.0.1:PORT, in the foreground (exec: SIGTERM or
# SIGINT reach `bentoml serve`, which stops its worker process and exits).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
PORT="${1:?usage: start.sh PORT}"
VENV="$ROOT/.peers/bentoml/venv"
[[ -x "$VENV/bin/bentoml" ]] || { echo "bentoml: no venv, run $HERE/setup.sh first" >&2; exit 1; }
export BENTOML_HOME="$ROOT/.peers/bentoml/home"
export BENTOML_DO_NOT_TRACK=True
export PYTHONUNBUFFERED=1
mkdir -p "$BENTOML_HOME"
exec "$VENV/bin/bentoml" serve server:CatDog --working-dir "$HERE" --host 127.0.0.1 --port "$PORT"
