#!/usr/bin/env bash
# Regenerate every experiment behind docs/results.md, then the document itself.
#   experiments/run_all.sh          quick budget: phase 1 (the one-seed sweeps, about 2 hours on 2 CPU cores: up to six
#                                   single-threaded processes at once), then phase 2 (the sweeps of issue 16, most over 3 seeds, which
#                                   pin the whole test set themselves: about 15 hours of single-threaded runs, two at a
#                                   time, so about 8 hours on 2 cores; the sum of their recorded wall times)
#   experiments/run_all.sh --full   the same runs scored on the whole 10,000-image test set (into results_full/)
#   PHASES=1 experiments/run_all.sh  phase 1 only
# Finished runs are reused and interrupted ones resume, so it can be stopped and restarted at any time.
# Extra arguments after the mode go to every `baffle sweep` call (e.g. --set estimator.engine=loop); note that
# they change the runs' configs, so earlier outputs are then refused (pass --force to recompute them).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=quick
if [[ "${1:-}" == "--full" ]]; then MODE=full; shift; fi
EXTRA=("$@")
RES=results
if [[ $MODE == full ]]; then
  RES=results_full
  EXTRA+=(--set data.test_subset=0)
fi
BAFFLE="nice -n 10 .venv/bin/baffle"
PY="nice -n 10 .venv/bin/python"
[[ -x .venv/bin/baffle ]] || { BAFFLE="nice -n 10 baffle"; PY="nice -n 10 python"; }

CKPT=results/pretrain/lenet_digits04.pt  # the path experiments/finetune.toml names (same in both modes)
if [[ ! -f $CKPT ]]; then
  $PY experiments/pretrain.py --set model.name=lenet --set data.image_size=0 --set "data.classes=[0,1,2,3,4]" --set data.test_subset=2000 --set run.threads=1 --steps 600 --out "$CKPT"
fi
mkdir -p "$RES"
sweep() { $BAFFLE sweep "experiments/$1.toml" --out "$RES/$1" "${EXTRA[@]}" --no-progress || echo "sweep $1 had failures"; }
# Single-threaded runs side by side keep both cores busy.
( sweep main_table ) > "$RES/lane1.log" 2>&1 &
LANE1=$!
( for name in beyond_paper k_sweep ablations finetune lr_sweep; do sweep "$name"; done ) > "$RES/lane2.log" 2>&1 &
LANE2=$!
GOAL_LANES=()
for run in mnist_iid mnist_dir0.5 fashion_iid fashion_iid_k100; do  # the long runs side by side (one sweep each)
  ( $BAFFLE sweep experiments/goals.toml --out "$RES/goals" --only "^$run\$" "${EXTRA[@]}" --no-progress ) > "$RES/goals_$run.log" 2>&1 &
  GOAL_LANES+=($!)
done
echo "running: lane 1 (main_table), lane 2 (beyond_paper, k_sweep, ablations, finetune, lr_sweep), goals (4 runs); logs in $RES/*.log"
wait $LANE1 $LANE2 "${GOAL_LANES[@]}"
sweep goals  # all finished: rewrite the goals table with every run
if [[ ${PHASES:-2} != 1 ]]; then
  # Phase 2: the sweeps of issue 16 (most over 3 seeds), in two lanes of about equal length.
  ( for name in default_optim pass_budget pass_budget_98 fashion_b128 fashion_rf fashion_rf_k1000 noniid_v2 noniid_b32 weight_decay multistep; do sweep "$name"; done ) > "$RES/lane3.log" 2>&1 &
  LANE3=$!
  ( for name in robust_converged goals_v2 fashion_pass_budget noniid_b64 default_batch main_table_b32 batch_k; do sweep "$name"; done ) > "$RES/lane4.log" 2>&1 &
  LANE4=$!
  echo "running: phase 2 (issue 16 sweeps) in lanes 3 and 4; logs in $RES/lane3.log, $RES/lane4.log"
  wait $LANE3 $LANE4
fi
$PY experiments/make_results.py --results "$RES" --mode "$MODE"
