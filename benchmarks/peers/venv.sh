# Sourced by each peer's setup.sh: one venv per peer under .peers/<name>/venv, holding the CPU
# torch 2.13.0 (any other torch pulls a multi-GB CUDA build), this repository (editable, so
# `visionloop` and common.py's model load) and the peer. Idempotent: a stamp of the setup
# scripts and pyproject.toml skips the work when nothing changed.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
#   peer_venv NAME "module,module" PIP_SPEC...      # sets VENV; returns 0 when ready

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TORCH="torch==2.13.0"

peer_die() { echo "$1/setup.sh: $2" >&2; exit 1; }

peer_venv() {
    local name=$1 imports=$2 caller="${BASH_SOURCE[1]}"
    shift 2
    VENV="$ROOT/.peers/$name/venv"
    local stamp="$VENV/.setup-stamp" want
    want="$(cat "$caller" "${BASH_SOURCE[0]}" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]] \
        && "$VENV/bin/python" -c "import $imports, visionloop" 2>/dev/null; then
        echo "$name: $VENV is up to date"
        return 0
    fi
    # (from the repo root, so that a pyenv shim picks the project's Python)
    [[ -x "$VENV/bin/python" ]] || (cd "$ROOT" && "${PYTHON:-python3}" -m venv "$VENV") \
        || peer_die "$name" "cannot create $VENV"
    local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
    # This machine's pip config lists local index folders that may be missing: drop that noise.
    _quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
    _quiet "${pip[@]}" "$TORCH" || peer_die "$name" "cannot install $TORCH"
    # torch pinned again, so that the peer can never swap in another (CUDA) build.
    # OpenVINO too: compare.py's "<peer>-fast" systems give the peer our fast engine.
    _quiet "${pip[@]}" "$TORCH" "openvino==2026.4.1" "onnx==1.23.2" -e "$ROOT" "$@" \
        || peer_die "$name" "could not install $* next to $TORCH (see pip's error above)"
    "$VENV/bin/python" -c "
import torch, visionloop, $imports
assert torch.__version__.startswith('2.13.0'), torch.__version__
print('$name: ok, torch', torch.__version__)" || peer_die "$name" "imports failed in $VENV"
    echo "$want" > "$stamp"
}
