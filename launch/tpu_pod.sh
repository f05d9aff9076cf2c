#!/bin/bash
# A TPU-VM pod slice: the same command on every worker (one JAX process per
# host); jax.distributed.initialize() finds the pod itself. The workdir must
# be shared by all hosts (a gs:// bucket): every process takes part in
# checkpointing; process 0 writes metrics and results.
#
#   TPU=my-v4-64 ZONE=us-central2-b WORKDIR=gs://my-bucket/byol_r50_300ep \
#     launch/tpu_pod.sh configs/byol_imagenet.py:epochs=300 [--config.x=...]
#
# Assumes byol_jax is installed on every worker (`pip install 'byol_jax[tpu]'`
# from a checkout at ~/byol_jax, e.g. via the same gcloud command); PYTHON
# names the interpreter there (default: python3 on the worker's PATH).
set -euo pipefail
CONFIG=${1:?usage: TPU=... ZONE=... WORKDIR=gs://... launch/tpu_pod.sh CONFIG [overrides...]}
shift
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://...)}"
OVERRIDES=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="
  cd ~/byol_jax && ${PYTHON:-python3} -m byol_jax.main --distributed \
    --config=$CONFIG --workdir=$WORKDIR $OVERRIDES"
