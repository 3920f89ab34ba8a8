#!/usr/bin/env bash
# The GPU benchmark set, in one go (about 6-8 minutes on one H100/H200):
#   1. the GPU tests (CUDA-graph loop == eager loop, TensorRT where installed)
#   2. maskgit-imagenet512 (random weights), torch backend with CUDA graphs, batch 1 and 32:
#      vanilla N=32 vs hybrid B=8/12 (shortcut and training-free strategies) vs the plain loop
#   3. the same at batch 128, shortcut B=12 only (the base step near the matrix peak)
#   4. tiny-animals (the shipped model) on the GPU, batch 1 and 32
#   5. dimoo-8b (random weights, full 32 layers) at batch 1, N=64 vs B=9/11/14; tiny-scenes
#   6. TensorRT (benchmarks/trt_gpu.py): engines built and run, tokens and FD against torch, speed
# Results go to $OUT (or benchmarks/results/gpu) as JSON + markdown + plots, and a log.
#   bash benchmarks/gpu.sh            # on the GPU machine, from the repository root (all sections)
#   bash benchmarks/gpu.sh dimoo      # only some: tests maskgit tiny dimoo trt
#   QUICK=1 bash benchmarks/gpu.sh    # tiny sizes: checks the script itself (CPU is fine)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MIGM_CACHE=${MIGM_CACHE:-/tmp/migm-cache}
LOG=$OUT/gpu.log
# plots are left out here (the device returns few files); make them from the JSON with
#   python -m migm.cli.bench plot benchmarks/results/gpu/*.json
bench() { $PY -m migm.cli.bench speed "$@" 2>&1 | grep -v Warning | tee -a "$LOG"; rm -f "$OUT"/*.png; }

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"; } | tee "$LOG"

if [ -n "${QUICK:-}" ]; then
  bench --preset tiny-animals --backend torch --batch 1,2 --steps 4 --budget 2 --repeats 1 --json "$OUT/quick.json"
  exit
fi

# sections: all by default, or the ones named on the command line
want() { [ $# -eq 0 ] || [[ " $SECTIONS " == *" $1 "* ]]; }
SECTIONS="$*"
if [ -z "$SECTIONS" ] || want tests; then
  $PY -m pytest -q -p no:cacheprovider tests/test_runtime.py tests/test_export.py tests/test_trt.py \
    -k "cuda or gpu or ort_matches" 2>&1 \
    | tail -5 | tee -a "$LOG"
fi
if [ -z "$SECTIONS" ] || want maskgit; then
  bench --preset maskgit-imagenet512 --backend torch --batch 1,32 --steps 32 --budget 8,12 \
    --strategies shortcut,reuse,extrapolate,fewer --repeats 3 --json "$OUT/maskgit512.json"
  bench --preset maskgit-imagenet512 --backend torch --batch 128 --steps 32 --budget 12 --strategies shortcut \
    --repeats 2 --json "$OUT/maskgit512_b128.json"
fi
if [ -z "$SECTIONS" ] || want tiny; then
  bench --preset tiny-animals --backend torch --batch 1,32 --steps 32 --budget 8,12 --strategies shortcut,reuse \
    --repeats 3 --json "$OUT/tiny.json"
fi
if [ -z "$SECTIONS" ] || want dimoo; then
  # Lumina-DiMOO size (8.1B, 4,228-token sequences), the paper's N = 64, B = 9/11/14, batch 1
  bench --preset dimoo-8b --backend torch --batch 1 --steps 64 --budget 9,11,14 --strategies shortcut \
    --repeats 1 --warmup 1 --json "$OUT/dimoo8b.json"
  bench --preset tiny-scenes --backend torch --batch 1,32 --steps 32 --budget 6,9 --strategies shortcut,reuse \
    --repeats 3 --json "$OUT/scenes.json"
fi
if [ -z "$SECTIONS" ] || want trt; then
  $PY benchmarks/trt_gpu.py --out "${OUT%/gpu}/trt" 2>&1 | grep -v Warning | tee -a "$LOG"
fi
date -u | tee -a "$LOG"
