#!/usr/bin/env bash
# Creates .peers/torchserve/venv (repo root found from this script's location) with the CPU
# torch 2.13.0 that visionloop uses, this repository (editable) and TorchServe 0.12.0.
# Idempotent: re-running only checks what is there. Exits non-zero with a message on failure.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PEER=$ROOT/.peers/torchserve
VENV=$PEER/venv
TORCH_VERSION=2.13.0
TS_VERSION=0.12.0

die() { echo "torchserve/setup.sh: $*" >&2; exit 1; }

command -v java >/dev/null || die "java not found (TorchServe's frontend needs a JRE 11+; apt-get install openjdk-17-jre-headless)"
mkdir -p "$PEER"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || die "cannot create venv $VENV"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)

have() { "$VENV/bin/python" - "$@" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    ok = all(version(n) .startswith(v) for n, v in (a.split("=", 1) for a in sys.argv[1:]))
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
}

# torch first, pinned: any other torch would pull a multi-GB CUDA build.
have "torch=$TORCH_VERSION" || "${PIP[@]}" "torch==$TORCH_VERSION" || die "cannot install torch==$TORCH_VERSION"
if ! have "torch=$TORCH_VERSION" "torchserve=$TS_VERSION" "torch-model-archiver=" "PyYAML=" "visionloop=" \
   || ! "$VENV/bin/python" -c "import visionloop" 2>/dev/null; then
    "${PIP[@]}" -e "$ROOT" "torch==$TORCH_VERSION" "torchserve==$TS_VERSION" torch-model-archiver pyyaml \
        || die "pip install of torchserve==$TS_VERSION failed"
fi
have "torch=$TORCH_VERSION" || die "torch is no longer $TORCH_VERSION in $VENV (a dependency replaced it)"
"$VENV/bin/python" -c "import ts, model_archiver, yaml, visionloop, torch" || die "imports failed in $VENV"
echo "torchserve: ready in $VENV (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'), torchserve $TS_VERSION)"
