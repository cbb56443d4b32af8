#!/usr/bin/env bash
# Creates .peers/torchserve/venv: the CPU torch 2.13.0, this repository (editable) and
# TorchServe 0.12.0 with its model archiver. Idempotent (see ../venv.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../venv.sh"
command -v java >/dev/null || peer_die torchserve \
    "java not found (TorchServe's frontend needs a JRE 11+; apt-get install openjdk-17-jre-headless)"
peer_venv torchserve "ts,model_archiver,yaml" "torchserve==0.12.0" torch-model-archiver pyyaml
