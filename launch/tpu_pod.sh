#!/usr/bin/env bash
# Runs the same zsl_jax command on every worker of a Cloud TPU VM pod slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       --config=configs/hgr_rn50.py --workdir=gs://bucket/runs/hgr
#
# Prerequisites: the repository checked out at the same path ($REPO_DIR, default ~/zsl_jax) on all
# workers, `bash launch/setup.sh --tpu` run there once (e.g. with this script's --setup flag), and
# the data reachable from every worker. jax.distributed.initialize() discovers the pod topology
# itself; the workdir must be shared (a GCS bucket or NFS) because all hosts write checkpoints.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
REPO_DIR=${REPO_DIR:-'~/zsl_jax'}
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project="$PROJECT"); fi

if [[ "${1:-}" == "--setup" ]]; then
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" --worker=all \
    --command="cd $REPO_DIR && bash launch/setup.sh --tpu"
  exit 0
fi
if [[ $# -eq 0 ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 [--setup] --config=configs/X.py --workdir=DIR [--config.k=v ...]" >&2
  exit 2
fi

# Quote every argument for the remote shell.
args=""
for a in "$@"; do args+=" $(printf '%q' "$a")"; done
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" --worker=all \
  --command="cd $REPO_DIR && python3 -m zsl_jax.main$args --config.distributed.initialize=True"
