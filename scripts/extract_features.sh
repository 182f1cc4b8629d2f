#!/usr/bin/env bash
# CLIP grid features for every split of one dataset (one HDF5 file per split under <root>/<DS>/clip_features/):
#   bash scripts/extract_features.sh DATASET [--root DIR] [extra options of `python -m feature_extraction extract`]
# DATASET: coco (train2014, val2014), vg (GQA train+valid images), gqa (testdev), nlvr (train, dev, test), or
# synthetic (all four; tiny random-init RN-tiny with BatchNorm recalibration unless --model/--pretrained say else).
# Defaults: --root datasets, open_clip RN101 with openai weights. Resumable: rerun the same command after a crash.
# Examples:
#   bash scripts/extract_features.sh coco --root /data/datasets --batch-size 128 --workers 8
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

# need NAME CANDIDATE...: at least one candidate image folder must exist under ROOT
need() {
  local name=$1 c
  shift
  for c in "$@"; do
    [[ -d "$ROOT/$c" ]] && return 0
  done
  local looked=""
  for c in "$@"; do looked+="${looked:+, }$ROOT/$c"; done
  echo "error: no image folder for $name (looked for $looked); put the images there or pass --root DIR." >&2
  exit 2
}
coco()  { need "coco train2014" COCO/images/train2014 COCO/train2014; need "coco val2014" COCO/images/val2014 COCO/val2014; }
vg()    { need "vg (GQA train/valid images)" VG/images VG/VG_100K VG/VG_100K_2; }
gqa()   { need "gqa testdev" GQA/images; }
nlvr()  { need "nlvr train" nlvr/images/train nlvr/train; need "nlvr dev" nlvr/images/dev nlvr/dev;
          need "nlvr test" nlvr/images/test nlvr/images/test1 nlvr/test nlvr/test1; }

case "$DATASET" in
  coco) coco ;;
  vg) vg ;;
  gqa) gqa ;;
  nlvr) nlvr ;;
  synthetic) coco; vg; gqa; nlvr ;;
  *) echo "error: unknown dataset '$DATASET'; choose one of coco, vg, gqa, nlvr, synthetic." >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
exec "$PY" -m feature_extraction extract --dataset "$DATASET" --root "$ROOT" ${ARGS[@]+"${ARGS[@]}"}
