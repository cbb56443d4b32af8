#!/usr/bin/env bash
# Creates .peers/pytriton/venv (repo-relative) with torch 2.13.0 (CPU, from local disk),
# this repository (editable, so `visionloop` imports) and nvidia-pytriton==0.7.0. Idempotent:
# re-running is a no-op unless this script or pyproject.toml changed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
VENV="$ROOT/.peers/pytriton/venv"
PY="${PYTHON:-python3}"
TORCH="torch==2.13.0"
PEER="nvidia-pytriton==0.7.0"

stamp="$VENV/.setup-stamp"
want="$(cat "$HERE/setup.sh" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$VENV/bin/python" -c "import pytriton, visionloop" 2>/dev/null; then
    echo "pytriton: $VENV is up to date"
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
    echo "pytriton: could not install $PEER next to $TORCH (see pip's error above)" >&2
    exit 1
fi
"$VENV/bin/python" - <<'PY'
import pytriton, torch, visionloop  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
from importlib.metadata import version

# Triton's binaries must load here: the Python-backend stub needs this interpreter's own shared
# libpython (start.sh puts its LIBDIR on LD_LIBRARY_PATH), and nothing else may be missing.
import os, pathlib, subprocess, sys, sysconfig
if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
    sys.exit(f"pytriton: {sys.executable} has no shared libpython, which Triton's stub needs "
             "(use a Python built with --enable-shared)")
base = pathlib.Path(pytriton.__file__).parent / "tritonserver"
stub = base / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / "triton_python_backend_stub"
env = {**os.environ, "LD_LIBRARY_PATH": sysconfig.get_config_var("LIBDIR")}
for binary in (base / "bin" / "tritonserver", stub):
    out = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True).stdout
    missing = [line.strip() for line in out.splitlines() if "not found" in line]
    if not binary.exists() or missing:
        sys.exit(f"pytriton: {binary} cannot run here: {missing or 'missing'}")
print(f"pytriton: ok (nvidia-pytriton {version('nvidia-pytriton')}, torch {torch.__version__})")
PY
echo "$want" > "$stamp"
