#!/usr/bin/env bash
# Shared launcher behind every paper-row script (VL-Adapter's calling convention):
#   bash scripts/<row>.sh NGPU [section.key=value ...]
# It validates the config, the datasets root and the features in one process first (one clear sentence and a
# non-zero exit when something is missing, nothing written to snap/), then starts torchrun with NGPU processes
# (nccl on GPUs, gloo on CPU) through vlrouting.launch, which ends a worker's error in its one sentence and exit
# status 2 instead of torchrun's failure report. SEED=<n> sets train.seed; PYTHON picks the interpreter; extra
# arguments are config overrides, e.g. data.root=/data/datasets model.backbone=/models/bart-base train.epochs=1.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash scripts/<row>.sh NGPU [section.key=value ...]" >&2
  exit 2
fi
CONFIG=$1
NGPU=$2
shift 2
if ! [[ "$NGPU" =~ ^[0-9]+$ ]] || [[ "$NGPU" -lt 1 ]]; then
  echo "error: NGPU must be a positive number of processes, got '$NGPU'." >&2
  exit 2
fi
PY=${PYTHON:-python3}
EXTRA=()
if [[ -n "${SEED:-}" ]]; then EXTRA+=("train.seed=${SEED}"); fi
"$PY" -m vlrouting.train --config "$CONFIG" --check "$@" "${EXTRA[@]}"
PORT=${MASTER_PORT:-$((29500 + RANDOM % 2000))}
exec "$PY" -m vlrouting.launch --nproc_per_node="$NGPU" --master_port="$PORT" \
  -m vlrouting.train --config "$CONFIG" "$@" "${EXTRA[@]}"
