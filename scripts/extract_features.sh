#!/usr/bin/env bash
# Features for every split of one dataset (one HDF5 file per split under <root>/<DS>/clip_features/):
#   bash scripts/extract_features.sh DATASET [--root DIR] [extra options of `python -m feature_extraction extract`]
# DATASET: coco (train2014, val2014), vg (GQA train+valid images), gqa (testdev), nlvr (train, dev, test), or
# synthetic (all four; tiny random-init RN-tiny with BatchNorm recalibration unless --model/--pretrained say else).
# Defaults: --root datasets, open_clip RN101 with openai weights. Resumable: rerun the same command after a crash.
# --layout contiguous writes each split as one (N, tokens, C) dataset chunked per image plus an id index (faster
# batch reads; `python -m feature_extraction convert --input OLD.h5 --output NEW.h5` converts an existing file).
# Examples:
#   bash scripts/extract_features.sh coco --root /data/datasets --batch-size 128 --workers 8
#   bash scripts/extract_features.sh coco --root /data/datasets --layout contiguous
#   bash scripts/extract_features.sh synthetic --root demo_work/datasets
# PYTHON picks the interpreter (default python3).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: bash scripts/extract_features.sh {coco,vg,gqa,nlvr,synthetic} [--root DIR] [extract options]" >&2
  exit 2
fi
DATASET=$1
shift
ROOT=datasets
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --root) [[ $# -ge 2 ]] || { echo "error: --root needs a folder." >&2; exit 2; }; ROOT=$2; shift 2 ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

PY=${PYTHON:-python3}
# fail fast (no network is loaded) when an image folder of the dataset layout (vlrouting/data/layout.py) is missing
"$PY" -m vlrouting.data.layout check-images "$DATASET" "$ROOT"
exec "$PY" -m feature_extraction extract --dataset "$DATASET" --root "$ROOT" ${ARGS[@]+"${ARGS[@]}"}
