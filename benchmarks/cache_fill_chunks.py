"""Filling the feature cache in chunks of ``FILL_ROWS`` new rows against one call for the whole slice (before 2026-12-06).

    .venv/bin/python benchmarks/cache_fill_chunks.py [--reps 7]   # ~1 minute; JSON in benchmarks/results/

rf_white (experiments/cifar10_rf.toml's model, its classifier trained): a fresh ``FeatureCache`` fills 128 new CIFAR-shaped
rows, a client's slice in the first epoch of a run. Time per fill; the variants alternate rep by rep in one process,
one thread, and their rows are compared. The memory side is ``experiments/cifar_memory.py --rf-only`` (docs/cifar.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle import estimator  # noqa: E402
from baffle.engine.batched import feature_cache  # noqa: E402
from baffle.engine.batched.program import Program  # noqa: E402
from baffle.models import build_model  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402

ROWS = 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("rf_white", in_channels=3).eval()
    prog = Program(model)
    shared = prog.shared_for([p for _, p in estimator.select_parameters(model, ["classifier.*"])])
    variants = {f"chunks of {feature_cache.FILL_ROWS}": feature_cache.FILL_ROWS, "whole slice (before)": ROWS}
    times: dict[str, list[float]] = {k: [] for k in variants}
    gap = 0.0
    for r in range(args.reps + 1):  # the first rep warms both up and is not timed
        x = torch.randn(ROWS, 3, 32, 32, generator=torch.Generator().manual_seed(r))
        outs = []
        for name, rows in variants.items():
            feature_cache.FILL_ROWS = rows
            cache = feature_cache.FeatureCache(1 << 30)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = cache.prefix(prog, x, shared)
            if r:
                times[name].append(time.perf_counter() - t0)
            outs.append(torch.cat([v.t.reshape(ROWS, -1) for v in out.values()], 1))
        gap = max(gap, float((outs[0] - outs[1]).abs().max()))
    med = {n: statistics.median(t) for n, t in times.items()}
    for n, t in med.items():
        print(f"{n:22s} {1000 * t:8.1f} ms per fill of {ROWS} new rows (median of {args.reps})")
    print(f"largest row difference {gap:.2e}; load {os.getloadavg()[0]:.2f}")
    write_json(results_dir(__file__) / "cache_fill_chunks.json", {
        "model": "rf_white", "rows": ROWS, "threads": 1, "reps": args.reps, "median_s": med, "max_abs_row_diff": gap,
        "loadavg": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
