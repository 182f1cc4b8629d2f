#!/usr/bin/env bash
# Run one paper row over several seeds, then aggregate mean ± std beside the paper's numbers.
#   bash scripts/run_seeds.sh NAME NGPU [section.key=value ...]
# SEEDS="42 43 9595" by default (VL-PET's and the paper's Table C7 seeds). A failed seed is reported and the
# others still run; aggregate lists it. Results: snap/<NAME>/seed<k>/ and snap/<NAME>/results.{md,csv,png}.
set -uo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash scripts/run_seeds.sh NAME NGPU [section.key=value ...]" >&2
  exit 2
fi
NAME=$1; NGPU=$2; shift 2
HERE="$(cd "$(dirname "$0")" && pwd)"
if [[ ! -f "$HERE/$NAME.sh" ]]; then
  echo "error: no script scripts/$NAME.sh; choose one of: $(cd "$HERE" && ls multitask_*.sh vladapter_*.sh | sed 's/\.sh$//' | tr '\n' ' ')" >&2
  exit 2
fi
PY=${PYTHON:-python3}
SNAP=snap
EXP=$NAME
for arg in "$@"; do
  case "$arg" in
    output.snap_dir=*) SNAP=${arg#output.snap_dir=} ;;
    output.experiment=*) EXP=${arg#output.experiment=} ;;
  esac
done
status=0
for seed in ${SEEDS:-42 43 9595}; do
  echo "== $NAME seed $seed"
  if ! SEED=$seed bash "$HERE/$NAME.sh" "$NGPU" "$@"; then
    echo "warning: $NAME seed $seed failed; continuing with the other seeds" >&2
    status=1
  fi
done
"$PY" -m vlrouting aggregate "$SNAP/$EXP" || status=$?
exit $status
