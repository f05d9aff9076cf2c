#!/bin/bash
# One host, all its devices (CPU, one or more GPUs, or a single TPU VM).
#   launch/local.sh configs/byol_cifar10.py runs/byol_cifar10 [--config.x=...]
# Runs the Python on PATH (an activated venv, or `pip install .` site-wide);
# PYTHON=/path/to/python chooses another.
set -euo pipefail
CONFIG=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m byol_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
