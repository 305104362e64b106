#!/usr/bin/env bash
# The GPU checks owed by the CPU sessions, as one script for a lent GPU machine (target: < 8 min on one H100/H200).
#
#   bash benchmarks/gpu_suite.sh [RESULTS_FILE]
#
# Runs, each under its own time limit so one hang cannot eat the lease:
#   1. pytest -m gpu (tests/gpu: bf16 training learns, CUDA prediction agrees with CPU, a central-DP round;
#      tests/slide/test_jpeg_batch.py: nvJPEG strip decoding against imagecodecs, predict --gpu-decode)
#   2. bench_train --gpu-only (DHUnet and dhunet_tiny img/s, bf16 + channels_last, loader vs in-memory)
#   3. bench_models --gpu-only (fwd / fwd+bwd img/s, fp32, bf16, channels_last, compile; batch 24 and 64)
#   4. bench_predict --gpu (DHUnet windows/s through predict_to_tiff on a virtual slide)
#   5. bench_dpsgd --gpu (DHUnet DP-SGD vs non-private img/s at batch 24, peak memory; target within 3x)
#   6. bench_fed --dhunet (numpy server step on DHUnet-size updates on this host's CPUs, against the GPU img/s)
# and appends every table to RESULTS_FILE (default: $OUT/gpu_results.md when $OUT is set, else gpu_results.md),
# which RESULTS.md can quote. The machine's python must already have torch (CUDA) and timm; the other
# wheels are installed offline from ./wheels when that folder exists (carry it beside the repository).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RES=${1:-${OUT:+$OUT/gpu_results.md}}
RES=${RES:-gpu_results.md}
WORK=${WORK:-/tmp/wsiseg-gpu}
mkdir -p "$WORK" "$(dirname "$RES")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d wheels ]; then
  $PY -m pip install -q --no-index --find-links wheels wheels/*.whl 2>&1 | tail -3
fi
if ! $PY -c 'import torch, timm' 2>/dev/null; then
  echo "gpu_suite: $PY lacks torch or timm; use a python that has both (PYTHON=...)" | tee -a "$RES"
  exit 3
fi
if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_suite: torch sees no CUDA device; nothing to measure here" | tee -a "$RES"
  exit 3
fi
{
  echo "## gpu_suite.sh, $(date -u +%Y-%m-%dT%H:%MZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
  echo "CPU cores: $(nproc); $($PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
  echo
} >>"$RES"
status=0
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "- $name: exit $rc in $((SECONDS - t0)) s (limit $limit s)" >>"$RES"
  [ $rc -eq 0 ] || status=1
}
step "pytest -m gpu" 150 $PY -m pytest -q -s -p no:cacheprovider -m gpu tests/gpu tests/slide/test_jpeg_batch.py tests/audit/test_cli_audit.py
step "bench_train --gpu-only" 100 $PY benchmarks/bench_train.py --gpu-only --work "$WORK" --out "$RES"
step "bench_models --gpu-only" 90 $PY benchmarks/bench_models.py --gpu-only --models dhunet dhunet_tiny unet \
  --iters 5 --out "$RES"
step "bench_predict --gpu" 90 $PY benchmarks/bench_predict.py --gpu --work "$WORK" --out "$RES"
step "bench_dpsgd --gpu" 90 $PY benchmarks/bench_dpsgd.py --gpu --models dhunet dhunet_tiny --batch 24 \
  --physical-batch 8 --out "$RES"
step "bench_fed --dhunet" 40 $PY benchmarks/bench_fed.py --dhunet --train-img-s 600 --work "$WORK" --out "$RES"
echo "gpu_suite: results in $RES"
exit $status
