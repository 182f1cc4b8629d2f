#!/usr/bin/env bash
# The embedded default, end to end on CPU (`make demo`): synthetic four-task benchmark → tiny CLIP features →
# tiny CLIP-BART "pretrained" by a short full fine-tuning warm-up on a disjoint synthetic split → PEFT runs of
# multiple adapters with routing `none` and with mix `comb3` over seeds, through the same scripts and torchrun path
# as real runs → mean ± std table beside the paper's numbers and the blind baselines.
# Everything lands in snap/demo/ (work files in snap/demo/work/). Environment: SEEDS (default "42 43"),
# NPROC (torchrun processes, default 2), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=snap/demo
WORK=$OUT/work
SEEDS=${SEEDS:-"42 43"}
NPROC=${NPROC:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
TIMES=()
stage() {  # stage NAME CMD...: run, time and record a stage
  local name=$1 t=$(date +%s)
  shift
  echo "== $name"
  "$@"
  TIMES+=("$(printf '%-34s %4ds' "$name" $(( $(date +%s) - t )))")
}

rm -rf "$OUT"
mkdir -p "$WORK"

# Small PEFT runs: tiny backbone, all four tasks, base batch 32 (per-task 32/53/10/26), no per-epoch validation.
COMMON=(data.root="$WORK/datasets" model.backbone="$WORK/backbone" model.visual_init="$WORK/backbone"
        output.snap_dir="$OUT" data.num_workers=0 train.batch_size=32 train.eval_every=0
        train.epochs=${DEMO_EPOCHS:-6} train.num_beams=3 train.log_every=0)

stage "1 synthetic benchmark + warm-up set" bash -c "
  '$PY' -m vlrouting synthetic --root '$WORK/datasets' --seed 0 &&
  '$PY' -m vlrouting synthetic --root '$WORK/warmup' --seed 1 --scale 0.5"
stage "2 tiny CLIP features (RN-tiny)" bash -c "
  bash scripts/extract_features.sh synthetic --root '$WORK/datasets' --no-progress --threads 1 \
    --recalibrate-images '$WORK/datasets/COCO/images/train2014' &&
  bash scripts/extract_features.sh synthetic --root '$WORK/warmup' --no-progress --threads 1 \
    --recalibrate-images '$WORK/datasets/COCO/images/train2014'"
stage "3 tiny tokenizer + BART" "$PY" -m vlrouting.models.tiny --out "$WORK/tiny" --corpus-root "$WORK/datasets" \
  --d-model 128
stage "4 full fine-tuning warm-up" bash scripts/vladapter_full_finetuning.sh "$NPROC" \
  data.root="$WORK/warmup" model.backbone="$WORK/tiny" output.snap_dir="$WORK/snap" output.experiment=warmup \
  data.num_workers=0 train.batch_size=32 train.lr=5e-4 train.epochs=${WARMUP_EPOCHS:-15} train.eval_every=0 \
  train.test_after=false train.log_every=0 train.seed=0
stage "5 export warmed-up backbone" "$PY" -m vlrouting.models.export --run "$WORK/snap/warmup/seed0" --out "$WORK/backbone"
for NAME in multitask_adapter_multiple_none multitask_adapter_comb3; do
  for SEED in $SEEDS; do
    stage "6 $NAME seed $SEED" env SEED="$SEED" bash "scripts/$NAME.sh" "$NPROC" "${COMMON[@]}" train.lr=1e-3
  done
done
stage "7 aggregate" "$PY" -m vlrouting aggregate "$OUT/multitask_adapter_multiple_none" "$OUT/multitask_adapter_comb3" \
  --out "$OUT"
"$PY" - "$WORK/datasets/benchmark_card.json" <<'EOF'
import json, sys
card = json.load(open(sys.argv[1]))
print("\nBlind baselines on the synthetic test splits (x100): majority answer / best per-question-type prior")
for task, split in (("vqa", "karpathy_test"), ("gqa", "testdev"), ("nlvr", "test")):
    s = card[task]["splits"][split]
    print(f"  {task:<5} {100 * s['majority']:6.2f} / {100 * s['type_prior']:6.2f}")
print("  caption: no blind baseline (CIDEr of a model that ignores the image is near 0 on these scenes)")
EOF
echo
echo "Stage times (2 CPU cores):"
printf '  %s\n' "${TIMES[@]}"
echo "  total                              $(( $(date +%s) - T0 ))s"
echo "Table, CSV and plot: $OUT/results.md $OUT/results.csv $OUT/results.png"
