#!/bin/bash
# One host, all its devices (CPU, one or more GPUs, or a single TPU VM).
#   launch/local.sh configs/byol_cifar10.py runs/byol_cifar10 [--config.x=...]
set -euo pipefail
CONFIG=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
cd "$(dirname "$0")/.."
exec .venv/bin/python -m byol_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
