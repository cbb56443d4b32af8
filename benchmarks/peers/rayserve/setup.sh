#!/usr/bin/env bash
# Creates .peers/rayserve/venv (repo root found from this script's location) with the CPU
# torch 2.13.0 that visionloop uses, this repository (editable) and ray[serve] 2.60.0.
# Idempotent: re-running only checks what is there. Exits non-zero with a message on failure.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PEER=$ROOT/.peers/rayserve
VENV=$PEER/venv
TORCH_VERSION=2.13.0
RAY_VERSION=2.60.0

die() { echo "rayserve/setup.sh: $*" >&2; exit 1; }

# Ray must run in its own network namespace (its servers bind all interfaces).
command -v unshare >/dev/null || die "unshare (util-linux) not found; needed for run_in_netns.sh"
command -v ip >/dev/null || die "ip (iproute2) not found; apt-get install iproute2"
unshare -n true 2>/dev/null || die "cannot create a network namespace here (unshare -n needs root/CAP_SYS_ADMIN)"

mkdir -p "$PEER"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || die "cannot create venv $VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)

have() { "$VENV/bin/python" - "$@" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    ok = all(version(n).startswith(v) for n, v in (a.split("=", 1) for a in sys.argv[1:]))
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
}

# torch first, pinned: any other torch would pull a multi-GB CUDA build.
have "torch=$TORCH_VERSION" || "${PIP[@]}" "torch==$TORCH_VERSION" || die "cannot install torch==$TORCH_VERSION"
if ! have "torch=$TORCH_VERSION" "ray=$RAY_VERSION" "visionloop=" \
   || ! "$VENV/bin/python" -c "import visionloop, ray.serve, starlette" 2>/dev/null; then
    "${PIP[@]}" -e "$ROOT" "torch==$TORCH_VERSION" "ray[serve]==$RAY_VERSION" \
        || die "pip install of ray[serve]==$RAY_VERSION failed"
fi
have "torch=$TORCH_VERSION" || die "torch is no longer $TORCH_VERSION in $VENV (a dependency replaced it)"
"$VENV/bin/python" -c "import visionloop, torch, ray, ray.serve, starlette" || die "imports failed in $VENV"
echo "rayserve: ready in $VENV (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), ray $RAY_VERSION)"
