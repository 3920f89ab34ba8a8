#!/usr/bin/env bash
# The whole tiny-scenes recipe (text-to-image, llada family), from data to shipped assets:
#   VQ-VAE on 64x64 scenes -> crop classifier -> base (tiny-scenes) -> ship -> CFG sweep ->
#   trajectories (DiMOO sampler) -> DiMOO shortcut -> ship-shortcut -> GenEval-like benchmark.
#
#   bash scripts/train_scenes.sh                      # CPU (the base: 43 min on 2 cores)
#   DEVICE=cuda bash scripts/train_scenes.sh          # a GPU: minutes
#   QUICK=1 bash scripts/train_scenes.sh              # a smoke run of every stage (tiny step counts)
#
# The defaults are the GPU recipe. The shortcut shipped today was trained on the CPU with fewer
# steps (its meta.train says so): SC_STEPS=400 SC_EVAL=100 BUDGETS=4,6,8 (decay at 320).
#
# Outputs: RUNS (training state, trajectories), ASSETS (the shipped checkpoints + tokenizer),
# RESULTS (cfg sweep, GenEval table, grids). Each stage resumes or is skipped when done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TRAIN="$PY -m migm.cli.train"
DEVICE=${DEVICE:-cpu}
RUNS=${RUNS:-runs/scenes}
ASSETS=${ASSETS:-migm/assets/scenes}
RESULTS=${RESULTS:-benchmarks/results/scenes}
if [ "${QUICK:-0}" = 1 ]; then
  VQ_STEPS=20 CLS_STEPS=20 BASE_STEPS=4 BASE_BATCH=8 TRAJ=8 SC_STEPS=4 SEEDS=1 SWEEP=0,2
  SC_BATCH=4 SC_EVAL=2 EVAL_STEPS=4 BUDGETS=2 STRATEGIES=shortcut,reuse
fi
VQ_STEPS=${VQ_STEPS:-1500}
CLS_STEPS=${CLS_STEPS:-1500}
BASE_STEPS=${BASE_STEPS:-1200}   # x batch 64: 43 min on a 2-core CPU (2 s/step + data)
BASE_BATCH=${BASE_BATCH:-64}
BASE_LR=${BASE_LR:-1e-3}
SWEEP=${SWEEP:-0,2,4,6,8}
TRAJ=${TRAJ:-1000}
SC_STEPS=${SC_STEPS:-1500}
SC_BATCH=${SC_BATCH:-32}
SC_EVAL=${SC_EVAL:-500}
SEEDS=${SEEDS:-4}
EVAL_STEPS=${EVAL_STEPS:-32}
BUDGETS=${BUDGETS:-6,8,12}
STRATEGIES=${STRATEGIES:-shortcut,reuse,extrapolate,fewer}
mkdir -p "$RUNS" "$RESULTS"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

stamp vq
$TRAIN vq --data scenes --out "$RUNS/vq" --steps "$VQ_STEPS" --device "$DEVICE"
stamp classifier
$TRAIN classifier --data scenes --out "$RUNS/classifier" --steps "$CLS_STEPS" --device "$DEVICE"
stamp base
$TRAIN base --preset tiny-scenes --vq "$RUNS/vq" --out "$RUNS/base" --steps "$BASE_STEPS" \
  --batch-size "$BASE_BATCH" --lr "$BASE_LR" --device "$DEVICE"
stamp "ship + cfg sweep"
$TRAIN ship --model tiny-scenes --vq "$RUNS/vq" --classifier "$RUNS/classifier" --base "$RUNS/base" \
  --guidance 2 --out "$ASSETS"
$PY benchmarks/geneval_scenes.py --model-dir "$ASSETS" --sweep-cfg "$SWEEP" --seeds 2 --steps "$EVAL_STEPS" \
  --device "$DEVICE" --out "$RESULTS/cfg_sweep.json"
CFG=$($PY -c "import json,sys; r=json.load(open(sys.argv[1]))['rows']; print(max(r, key=lambda x: (x['all'], -x['cfg']))['cfg'])" "$RESULTS/cfg_sweep.json")
stamp "chosen cfg $CFG"
$TRAIN ship --model tiny-scenes --vq "$RUNS/vq" --classifier "$RUNS/classifier" --base "$RUNS/base" \
  --guidance "$CFG" --out "$ASSETS"
stamp trajectories
rm -rf "$RUNS/traj"  # recorded with the shipped base of this run (its digest changes with the cfg)
$TRAIN trajectories --base "$ASSETS/base" --out "$RUNS/traj" --images "$TRAJ" --steps "$EVAL_STEPS" --device "$DEVICE"
stamp shortcut
rm -f "$RUNS/shortcut".*
$TRAIN shortcut --base "$ASSETS/base" --trajectories "$RUNS/traj" --out "$RUNS/shortcut" \
  --steps "$SC_STEPS" --batch-size "$SC_BATCH" --lr 5e-4 --decay-at $(( SC_STEPS * 4 / 5 )) --ema 0.995 \
  --rollout "${ROLLOUT:-6}" --plan-budgets "$BUDGETS" --kl 1.0 --heads 4 --eval-every "$SC_EVAL" --device "$DEVICE"
$TRAIN ship-shortcut "$RUNS/shortcut" --model tiny-scenes --out "$ASSETS"
stamp geneval
$PY benchmarks/geneval_scenes.py --model-dir "$ASSETS" --seeds "$SEEDS" --device "$DEVICE" --steps "$EVAL_STEPS" \
  --budgets "$BUDGETS" --strategies "$STRATEGIES" --grid "$RESULTS/grids" --out "$RESULTS/geneval.json"
stamp done
