#!/usr/bin/env bash
# GPU checks in one short run (issue 13 item 4). GPU time is scarce: everything is here, run it once.
#
#   bash benchmarks/gpu_check.sh            # writes JSON into $OUT (the device tool's folder) or benchmarks/results/
#
# 1. noise spec v2 on CUDA: bit-identity with the numpy reference (both kinds, ragged offsets, 22.7M
#    elements), reconstruct_torch on CUDA vs numpy, device speed of generation and reconstruction
#    (benchmarks/gpu_noise_check.py -> gpu_noise_check.json);
# 2. the default job on CUDA, shortened (run.rounds=300), if run.device=cuda is accepted by this version
#    (-> gpu_default_run/ with the run's summary.json, and its stdout/stderr tail in gpu_check.log).
# Status: written and CPU-checked for syntax only; it has NOT run on a GPU yet (no GPU in the session that
# wrote it). docs/performance.md says whether and where it has run.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
: > "$LOG"
nvidia-smi >> "$LOG" 2>&1 || echo "nvidia-smi failed" >> "$LOG"
status=0
echo "== gpu_noise_check" >> "$LOG"
timeout 300 "$PY" benchmarks/gpu_noise_check.py --out "$DEST" >> "$LOG" 2>&1 || status=1
echo "== default job on cuda (300 rounds)" >> "$LOG"
timeout 240 "$PY" -m baffle.cli run --set run.device=cuda --set run.rounds=300 --no-progress --no-preflight \
    --out "$DEST/gpu_default_run" --overwrite >> "$LOG" 2>&1 || echo "default job on cuda: failed or not supported (exit $?)" >> "$LOG"
tail -n 40 "$LOG"
exit $status
