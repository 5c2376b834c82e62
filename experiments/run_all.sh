#!/usr/bin/env bash
# Regenerate every experiment behind docs/results.md, then the document itself.
#   experiments/run_all.sh          quick budget (~1.4 M client minibatch forwards; about 40-60 min on 2 CPU cores)
#   experiments/run_all.sh --full   10x the rounds / forward budget, the whole test set (~10x longer)
# Finished runs are reused and interrupted ones resume, so it can be stopped and restarted at any time.
# Extra arguments after the mode go to every `baffle sweep` call (e.g. --set estimator.engine=loop). On a machine
# shared with other jobs add `--set run.threads=1`: two contending torch threads were 12x slower here.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=quick
if [[ "${1:-}" == "--full" ]]; then MODE=full; shift; fi
EXTRA=("$@")
RES=results
if [[ $MODE == full ]]; then
  RES=results_full
  EXTRA+=(--set run.rounds=400 --set sweep.forward_budget=40400 --set data.test_subset=0)
fi
BAFFLE="nice -n 10 .venv/bin/baffle"
PY="nice -n 10 .venv/bin/python"
[[ -x .venv/bin/baffle ]] || { BAFFLE="nice -n 10 baffle"; PY="nice -n 10 python"; }

CKPT=results/pretrain/lenet_digits04.pt  # the path experiments/finetune.toml names (same in both modes)
if [[ ! -f $CKPT ]]; then
  $PY experiments/pretrain.py --set "data.classes=[0,1,2,3,4]" --set data.test_subset=2000 --steps 600 --out "$CKPT"
fi
for name in main_table k_sweep ablations beyond_paper finetune; do
  $BAFFLE sweep "experiments/$name.toml" --out "$RES/$name" "${EXTRA[@]}" --no-progress || echo "sweep $name had failures"
done
$PY experiments/make_results.py --results "$RES" --mode "$MODE"
