#!/usr/bin/env bash
# A whole distributed deployment on this machine, for benchmarks/compare.py:
# redis-server (free loopback port, no persistence) + WORKERS `visionloop worker` processes
# (THREADS torch threads each) + one API replica on PORT (this script becomes that process).
# compare.py stops it by signalling the process group: the replica and workers drain, Redis exits.
# Usage: start.sh PORT WORKERS THREADS
set -euo pipefail
port=$1 workers=$2 threads=$3
cd "$(dirname "$0")/../.."
py=${PYTHON:-.venv/bin/python}
rport=$($py -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
url="redis://127.0.0.1:$rport/0"
for i in $(seq "$workers"); do
    $py -m visionloop worker --redis-url "$url" --name "bench-$i" --threads "$threads" \
        --policy adaptive --max-batch-size 8 --max-delay-ms 20 --log-level warning &
done
exec $py -m visionloop serve --transport redis --redis-url "$url" --port "$port" \
    --max-queue 256 --log-level warning
