#!/usr/bin/env bash
# Creates .peers/bentoml/venv: the CPU torch 2.13.0, this repository (editable) and bentoml==1.4.40.
# Idempotent (see ../venv.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
peer_venv bentoml bentoml "bentoml==1.4.40"
