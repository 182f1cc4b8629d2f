#!/usr/bin/env bash
# The routing paper's premise at laptop scale (`make demo-vit`): a vision and a language backbone pre-trained APART,
# joined only through PEFT with routing (paper §4). Synthetic benchmark → a tiny ViT warmed up on images only
# (multi-label shape/colour/size recognition of rendered scenes, never a benchmark image) → its pooled vectors
# extracted offline (extract-vit) → a tiny RoBERTa warmed up on text only (masked LM on the benchmark's training
# questions and captions) → LoRA with routing `none` and with Table 1 routings over seeds, through the same scripts as
# real runs (ViT+RoBERTa, VQAv2 as classification) → mean ± std beside the paper's Table 1 and the blind baselines.
# Everything lands in snap/demo_vit/ (work files in snap/demo_vit/work/). Environment: SEEDS (default "42 43 44"),
# ROUTINGS (default "none mul proj"), NPROC (default 1), DEMO_EPOCHS, VIT_STEPS, MLM_STEPS, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=snap/demo_vit
WORK=$OUT/work
SEEDS=${SEEDS:-"42 43 44"}
ROUTINGS=${ROUTINGS:-"none mul proj"}
NPROC=${NPROC:-1}
THREADS=$(( NPROC > 1 ? 1 : 2 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS} TOKENIZERS_PARALLELISM=false PYTHON="$PY"
T0=$(date +%s)
TIMES=()
stage() {  # stage NAME CMD...: run, time and record a stage
  local name=$1 t=$(date +%s)
  shift
  echo "== $name"
  "$@"
  TIMES+=("$(printf '%-42s %4ds' "$name" $(( $(date +%s) - t )))")
}

rm -rf "$OUT"
mkdir -p "$WORK"

# d = 64 for both backbones (the family joins them without a projection, as ViT-B/RoBERTa-base at 768); ViT patches
# of 32 px (50 tokens) keep the image warm-up within a couple of minutes on 2 cores.
stage "1 synthetic benchmark" "$PY" -m vlrouting synthetic --root "$WORK/datasets" --seed 0
stage "2 tiny ViT, images only" "$PY" -m vlrouting.models.tiny_vit --out "$WORK/vit" --hidden 64 --patch 32 \
  --steps "${VIT_STEPS:-200}" --pool 512
stage "3 extract pooled ViT vectors" "$PY" -m feature_extraction extract-vit --dataset coco --root "$WORK/datasets" \
  --model "$WORK/vit" --workers 0 --no-progress
stage "4 tiny RoBERTa, text only (MLM)" "$PY" -m vlrouting.models.tiny_roberta --out "$WORK/roberta" \
  --corpus-root "$WORK/datasets" --hidden 64 --steps "${MLM_STEPS:-300}"
ANSWERS=$("$PY" -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" "$WORK/datasets/vqa/trainval_ans2label.json")
# LoRA r = 16 (α = r) on the tiny RoBERTa; lr and epochs sized for a few hundred steps per run.
COMMON=(data.root="$WORK/datasets" model.backbone="$WORK/roberta" model.vit="$WORK/vit" model.num_answers="$ANSWERS"
        output.snap_dir="$OUT" data.num_workers=0 peft.r=16 peft.lora_alpha=16 train.batch_size=32 train.lr=1e-2
        train.epochs="${DEMO_EPOCHS:-4}" train.eval_every=0 train.log_every=0)
NAMES=()
for ROUTING in $ROUTINGS; do
  NAME=vit_roberta_vqa_lora_r64_$ROUTING
  NAMES+=("$OUT/$NAME")
  for SEED in $SEEDS; do
    stage "5 $NAME seed $SEED" env SEED="$SEED" bash "scripts/$NAME.sh" "$NPROC" "${COMMON[@]}"
  done
done
stage "6 aggregate" "$PY" -m vlrouting aggregate "${NAMES[@]}" --out "$OUT"
echo
"$PY" -m vlrouting baselines --root "$WORK/datasets" --out "$OUT/baselines.json" 2>&1 | grep -v '^PTBTokenizer'
echo
"$PY" - "$WORK" <<'PYEOF'
import json, sys
vit = json.load(open(f"{sys.argv[1]}/vit/warmup.json"))
rob = json.load(open(f"{sys.argv[1]}/roberta/warmup.json"))
print(f"Warm-ups: ViT held-out label accuracy {vit['label_accuracy']:.3f}; "
      f"RoBERTa held-out masked-token accuracy {rob['masked_token_accuracy']:.3f}")
PYEOF
echo "Stage times (2 CPU cores):"
printf '  %s\n' "${TIMES[@]}"
echo "  total                                      $(( $(date +%s) - T0 ))s"
echo "Table, CSV, plot, baselines: $OUT/results.md $OUT/results.csv $OUT/results.png $OUT/baselines.json"
