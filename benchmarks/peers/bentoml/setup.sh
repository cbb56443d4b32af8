#!/usr/bin/env bash
# Creates .peers/bentoml/venv (repo-relative) with torch 2.13.0 (CPU, from local disk),
# this repository (editable, so `visionloop` imports) and bentoml==1.4.40. Idempotent:
# re-running is a no-op unless this script or pyproject.toml changed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
VENV="$ROOT/.peers/bentoml/venv"
PY="${PYTHON:-python3}"
TORCH="torch==2.13.0"
PEER="bentoml==1.4.40"

stamp="$VENV/.setup-stamp"
want="$(cat "$HERE/setup.sh" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$VENV/bin/python" -c "import bentoml, visionloop" 2>/dev/null; then
    echo "bentoml: $VENV is up to date"
    exit 0
fi

# (run from the repo root, so that a pyenv shim picks the project's Python)
[[ -x "$VENV/bin/python" ]] || (cd "$ROOT" && "$PY" -m venv "$VENV")
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# (this machine's pip config lists local index folders that may be missing: drop that noise)
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet "${pip[@]}" "$TORCH"
# torch is pinned again here so that the peer can never swap in another (CUDA) build.
if ! quiet "${pip[@]}" "$TORCH" -e "$ROOT" "$PEER"; then
    echo "bentoml: could not install $PEER next to $TORCH (see pip's error above)" >&2
    exit 1
fi
"$VENV/bin/python" - <<'PY'
import bentoml, torch, visionloop  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
from importlib.metadata import version
print(f"bentoml: ok (bentoml {version('bentoml')}, torch {torch.__version__})")
PY
echo "$want" > "$stamp"
