#!/usr/bin/env bash
# Creates .peers/rayserve/venv: the CPU torch 2.13.0, this repository (editable) and
# ray[serve] 2.60.0. Ray must run in its own network namespace (its servers bind all
# interfaces), so the tools for that are checked too. Idempotent (see ../venv.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
command -v unshare >/dev/null || peer_die rayserve "unshare (util-linux) not found"
command -v ip >/dev/null || peer_die rayserve "ip (iproute2) not found; apt-get install iproute2"
unshare -n true 2>/dev/null || peer_die rayserve "cannot create a network namespace (needs root)"
peer_venv rayserve "ray.serve,starlette" "ray[serve]==2.60.0"
