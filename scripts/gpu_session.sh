#!/usr/bin/env bash
# One GPU session for the fused routed-attention kernel: everything that needs a GPU, in one go.
#
#   bash scripts/gpu_session.sh            # on a GPU machine, from the repository root (< 8 minutes)
#   bash scripts/gpu_session.sh --dry-run  # on a CPU machine: tiny shapes, Triton's interpreter and
#                                          # the mock CUDA driver; exercises every step's code path
#
# Results go to one folder: $OUT if set, else ./gpu-results:
#   summary.txt   one line per step: exit status, seconds, its RESULT line
#   <step>.log    the output of each step
#   check.jsonl   correctness rows: JIT and AOT (C launcher) vs the float64 reference
#   bench.jsonl   benchmark rows, appended as each is measured (batch 64 first); bench.md the table
#   tune.jsonl    tile sweep rows (each tile checked against the reference before it is timed)
#   ncu.csv       Nsight Compute counters of the three BiFormer-T stage kernels (if ncu exists)
# BUDGET (seconds, default 450) bounds the whole run: each step has a cap and is skipped once the
# budget is spent. PYTHON picks the interpreter (default python3). The project is imported from the
# working tree (PYTHONPATH=.), nothing is installed.
#
# Steps, most valuable first:
#   env      GPU, driver, CUDA, torch, triton, ncu versions
#   check    JIT kernel and AOT cubins through the C launcher vs the reference: BiFormer-T/S/B stages
#            (classification and dense prediction), odd contract shapes, fp16 + fp32, NaN-filled
#            outputs, one batch whose image offsets pass 2**31 elements
#   bench64  batch 64: fused vs the official eager core and its torch.compile (CUDA-graph timing)
#   pytest   pytest -m gpu on tests/kernels and tests/ops/test_bra_op.py (TensorRT tests excluded)
#   tune     bounded tile sweep of the BiFormer-T/S stages at batch 64, checked before timed
#   ncu      Nsight Compute: speed of light, occupancy, scheduler and memory counters per stage
#   bench    batches 8 and 1 with the time that is left
set -u
DRY=0
for a in "$@"; do
  case $a in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n 2,30p "$0"; exit 0 ;;
    *) echo "unknown argument $a (usage: bash scripts/gpu_session.sh [--dry-run])"; exit 2 ;;
  esac
done
[[ -f edge_biformer/kernels/bra_triton.py && -f scripts/bench_kernel.py ]] || {
  echo "run me from the repository root"; exit 2; }
OUT=${OUT:-./gpu-results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-450}
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
unset TRITON_INTERPRET
BENCH=(scripts/bench_kernel.py)
if [[ $DRY == 1 ]]; then BENCH+=(--device cpu); fi
JOBS=$(nproc 2>/dev/null || echo 4)
if [[ $DRY == 1 ]]; then JOBS=1; fi
: > "$OUT/summary.txt"
rm -f "$OUT"/check.jsonl "$OUT"/bench.jsonl "$OUT"/tune.jsonl

left() { echo $((BUDGET - ($(date +%s) - START))); }
step() {  # step NAME CAP_SECONDS command...
  local name=$1 cap=$2; shift 2
  local t; t=$(left)
  if (( t < 20 )); then echo "== $name: SKIPPED (budget spent)" | tee -a "$OUT/summary.txt"; return; fi
  (( cap > t - 10 )) && cap=$((t - 10))
  echo "== $name (cap ${cap}s, $(left)s left)"
  local t0; t0=$(date +%s)
  timeout -k 10 "$cap" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local line; line=$(grep -E '^RESULT' "$OUT/$name.log" | tail -1)
  echo "== $name: rc=$rc ($(( $(date +%s) - t0 ))s) ${line#RESULT }" | tee -a "$OUT/summary.txt"
}

step env 30 bash -c "nvidia-smi 2>&1 | head -15; command -v ncu >/dev/null && ncu --version | tail -1; \
  git log -1 --format='project %H %s' 2>/dev/null; $PY -c 'import torch, triton; \
  print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available()); \
  print(\"triton\", triton.__version__)'; echo RESULT env ok"
step check 150 "$PY" "${BENCH[@]}" --check --big --jobs "$JOBS" --jsonl "$OUT/check.jsonl"
step bench64 150 "$PY" "${BENCH[@]}" --batch 64 --jsonl "$OUT/bench.jsonl" --out "$OUT/bench.md"
PYTEST=(-m pytest -q -p no:cacheprovider -m gpu tests/kernels tests/ops/test_bra_op.py -k "not tensorrt")
step pytest 90 "$PY" "${PYTEST[@]}" -rs
step tune 90 "$PY" "${BENCH[@]}" --tune --tune-max 8 --models T/S --jsonl "$OUT/tune.jsonl"
if [[ $DRY == 0 ]] && command -v ncu >/dev/null 2>&1; then
  step ncu 70 ncu --target-processes all -k regex:bra_fwd_kernel -c 6 --csv --page details \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section SchedulerStats \
    --section WarpStateStats --section MemoryWorkloadAnalysis \
    --metrics smsp__inst_executed.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum \
    --log-file "$OUT/ncu.csv" "$PY" "${BENCH[@]}" --ncu-target
else
  echo "== ncu: not run ($( [[ $DRY == 1 ]] && echo dry run || echo 'ncu not found'))" | tee -a "$OUT/summary.txt"
  [[ $DRY == 1 ]] && step ncu-target 60 "$PY" "${BENCH[@]}" --ncu-target
fi
step bench 120 "$PY" "${BENCH[@]}" --batch 8 1 --jsonl "$OUT/bench.jsonl" --out "$OUT/bench-small.md"
echo "== total $(( $(date +%s) - START ))s; results in $OUT"
cat "$OUT/summary.txt"
