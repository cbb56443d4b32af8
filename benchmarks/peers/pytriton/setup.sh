#!/usr/bin/env bash
# Creates .peers/pytriton/venv: the CPU torch 2.13.0, this repository (editable) and
# nvidia-pytriton 0.7.0 (Triton 2.51 inside), then checks that Triton's binaries load here.
# Idempotent (see ../venv.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
peer_venv pytriton pytriton "nvidia-pytriton==0.7.0"
"$VENV/bin/python" - <<'PY'
import pytriton
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
print("pytriton: Triton binaries load here")
PY
