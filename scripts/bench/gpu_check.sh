#!/usr/bin/env bash
# One-shot check of the training stack on a CUDA machine, offline, in about 8 minutes:
#   (a) a small four-task dataset with random float16 features in our contiguous layout (no images, no extraction)
#       and a tiny tokenizer + BART built locally;
#   (b) a CUDA + bf16 training run of that tiny pipeline under torchrun (2 workers per task, persistent workers,
#       recycled feature buffers, pinned memory; no evaluation: caption metrics need Java) — plus a one-rank nccl
#       all_reduce, since the trainer starts a process group only with 2 or more processes;
#   (c) scripts/bench/bench_throughput.py at full bart-base size (base batch 500 with the paper's per-task ratios,
#       halved until it fits), 0 1 2 4 8 loader workers per task, contiguous layout;
# then a compact table. Every stage logs to OUT/<stage>.log; a failed stage is named with its last log lines.
#
#   bash scripts/bench/gpu_check.sh [--out DIR] [--cpu] [--compile] [--workers "0 1 2 4 8"] [--batch-size 500]
#                                   [--budget SECONDS]
#
# --cpu runs the same stages reduced on the CPU (fp32, tiny sizes): a check of the script itself.
# --compile adds a torch.compile run of the benchmark (compilation takes minutes: give it --budget 900).
# --budget (default 470 s) bounds the whole script: each stage gets at most what is left of it.
# Needs python3 with torch, transformers, h5py, tokenizers; no internet, no open_clip, pycocoevalcap or Java.
set -u
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-python3}"
OUT_DIR="$PWD/gpu_check_out"
CPU=0
COMPILE=0
WORKERS="0 1 2 4 8"
BATCH=500
BUDGET=470
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --cpu) CPU=1; shift ;;
    --compile) COMPILE=1; shift ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --batch-size) BATCH="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    *) echo "error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
START=$(date +%s)
declare -a STAGES=() RESULTS=()

elapsed() { echo $(( $(date +%s) - START )); }

# run_stage NAME TIMEOUT_S CMD...: runs CMD with a time limit (at most what is left of the budget), logs,
# records ok/FAILED
run_stage() {
  local name="$1" limit="$2"; shift 2
  local log="$OUT_DIR/$name.log" left=$(( BUDGET - $(elapsed) ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    STAGES+=("$name"); RESULTS+=("FAILED (not run: the ${BUDGET}s budget is spent)")
    echo "== $name: not run, the ${BUDGET}s budget is spent"; return 1
  fi
  echo "== [$(elapsed)s] $name (limit ${limit}s): $*"
  ( cd "$REPO" && timeout --kill-after=10 "$limit" "$@" ) >"$log" 2>&1
  local rc=$?
  STAGES+=("$name")
  if [ $rc -eq 0 ]; then
    RESULTS+=("ok")
    echo "   ok ($(elapsed)s)"
  else
    local why="exit $rc"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && why="timed out after ${limit}s"
    RESULTS+=("FAILED ($why)")
    echo "   FAILED: $name ($why); last lines of $log:"
    tail -n 25 "$log" | sed 's/^/   | /'
  fi
  return $rc
}

echo "== environment"
"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/environment.log"
import os, platform, shutil
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s), "
          f"bf16 {torch.cuda.is_bf16_supported()}, nccl {torch.distributed.is_nccl_available()}")
for mod in ("transformers", "h5py", "tokenizers"):
    try:
        print(f"{mod} {__import__(mod).__version__}")
    except ImportError as exc:
        print(f"MISSING {mod}: {exc}")
shm = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
print(f"cores {len(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.2f}, "
      f"/dev/shm {shm.free / 2**30:.1f} GiB free" if shm else "no /dev/shm")
EOF
if [ $CPU -eq 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "error: no CUDA device visible to torch; run with --cpu for the reduced CPU check." >&2
  exit 2
fi

if [ $CPU -eq 1 ]; then
  PREC=fp32; SMALL_BATCH=8; FEAT=64; BENCH_ARGS=(--arch tiny --device cpu
    --batches-per-task 2 --steps 2 --warmup 1 --feat-dim 64 --eval-batches 1 --workers 0 1)
  LIMIT_B=300; LIMIT_C=300
else
  PREC=bf16; SMALL_BATCH=64; FEAT=2048; BENCH_ARGS=(--arch bart-base --device cuda
    --batches-per-task 6 --steps 20 --warmup 3 --layout contiguous --eval-batches 2 --workers $WORKERS)
  LIMIT_B=120; LIMIT_C=300
fi

# (a) data + tiny model
run_stage a_data 120 "$PY" scripts/bench/bench_data.py --root "$WORK/datasets" --base-batch-size "$SMALL_BATCH" \
  --batches 4 --feat-dim "$FEAT" --layout contiguous \
  && run_stage a_tiny_model 120 "$PY" -m vlrouting.models.tiny --out "$WORK/tiny" --corpus-root "$WORK/datasets"

# (b) training smoke run under torchrun, then the nccl check
if [ -d "$WORK/tiny" ]; then
  run_stage b_train "$LIMIT_B" "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m vlrouting.train \
    --config multitask_lora_single_mul "data.root=$WORK/datasets" "model.backbone=$WORK/tiny" "model.feat_dim=$FEAT" \
    "output.snap_dir=$WORK/snap" "train.precision=$PREC" train.epochs=2 "train.batch_size=$SMALL_BATCH" \
    train.eval_every=0 train.test_after=false data.num_workers=2 train.log_every=5 train.checkpoint_every=3
  RESULTS_JSON="$WORK/snap/multitask_lora_single_mul/seed9595/results.json"
  if [ -f "$RESULTS_JSON" ]; then
    cp "$RESULTS_JSON" "$OUT_DIR/b_train_results.json"
    cat >"$WORK/check_results.py" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["status"] == "completed", r["status"]
t = r["throughput"]
print(f"steps {r['steps']}, epochs {r['epochs']}, {t['samples_per_s']} samples/s, data wait "
      f"{100 * t['data_wait_fraction']:.1f} %, peak memory {r['peak_memory_mb']} MB, versions {r['versions']}")
EOF
    run_stage b_train_results 30 "$PY" "$WORK/check_results.py" "$RESULTS_JSON" && sed 's/^/   /' "$OUT_DIR/b_train_results.log"
  fi
fi
if [ $CPU -eq 0 ]; then
  cat >"$WORK/nccl_check.py" <<'EOF'
import torch, torch.distributed as dist
torch.cuda.set_device(0)
dist.init_process_group("nccl")
x = torch.ones(4, device="cuda")
dist.all_reduce(x)
torch.cuda.synchronize()
assert x.tolist() == [1.0] * 4, x
print("nccl all_reduce ok:", x.tolist())
dist.destroy_process_group()
EOF
  run_stage b_nccl 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 "$WORK/nccl_check.py"
fi

# (c) throughput at full size: the paper's base batch, halved while it does not fit
B=$BATCH
if [ $CPU -eq 1 ]; then B=4; fi
while :; do
  if run_stage "c_bench_b$B" "$LIMIT_C" "$PY" scripts/bench/bench_throughput.py "${BENCH_ARGS[@]}" \
      --batch-size "$B" --out "$OUT_DIR/bench_b$B.json"; then
    BENCH_JSON="$OUT_DIR/bench_b$B.json"; break
  fi
  if grep -qi "out of memory" "$OUT_DIR/c_bench_b$B.log" && [ "$B" -gt 32 ]; then
    B=$(( B / 2 )); echo "   out of memory: retrying with base batch $B"; continue
  fi
  break
done
if [ $COMPILE -eq 1 ] && [ -n "${BENCH_JSON:-}" ]; then
  run_stage "c_bench_compile_b$B" 900 "$PY" scripts/bench/bench_throughput.py "${BENCH_ARGS[@]}" --batch-size "$B" \
    --compile --workers 4 --eval-batches 0 --out "$OUT_DIR/bench_compile_b$B.json"
fi

echo
echo "== summary ($(elapsed)s)"
for i in "${!STAGES[@]}"; do printf '%-24s %s\n' "${STAGES[$i]}" "${RESULTS[$i]}"; done
if [ -n "${BENCH_JSON:-}" ]; then
  echo
  sed -n '/^Loader (/,$p' "$OUT_DIR/c_bench_b$B.log"
  "$PY" - "$BENCH_JSON" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["compute"]
mfu = f"{100 * c['flops_per_s'] / (r['peak_tflops'] * 1e12):.1f} %" if r["peak_tflops"] else "n/a"
print(f"\ncompact: {r['machine']['device_name']} | base batch {r['batch_size']} | step {c['samples_per_s']:,.0f} "
      f"samples/s | MFU {mfu} | peak {c['peak_memory_mb'] / 1024:.1f} GB | "
      + " | ".join(f"{t['workers']}w: {t['samples_per_s']:,.0f}/s wait {100 * t['data_wait_fraction']:.1f} %"
                   for t in r["training"]))
EOF
fi
for r in "${RESULTS[@]}"; do case "$r" in ok) ;; *) exit 1 ;; esac; done
exit 0
