#!/usr/bin/env bash
# Creates .peers/litserve/venv: the CPU torch 2.13.0, this repository (editable) and litserve==0.2.19.
# Idempotent (see ../venv.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
peer_venv litserve litserve "litserve==0.2.19"
