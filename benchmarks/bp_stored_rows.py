"""Backprop twins over a frozen bottom: stored rows (``BatchedEngine.frozen_top``) against running the whole model.

    .venv/bin/python benchmarks/bp_stored_rows.py [--steps 30]   # ~2 minutes alone; JSON in benchmarks/results/

One FedSGD round as ``baffle run --set run.method=fedsgd`` runs it for experiments/cifar10_rf.toml: 10 clients, each one
``BPClient.gradient`` step of 128 samples on rf_white's classifier (the 2,304 frozen features below it). Steady state:
every sample of the pool already stored (a run after its first ~40 rounds). The two variants are two clients on two
models with the same weights, one with the feature cache (the default) and one with ``feature_cache_mb=0`` (the path
every backprop client took before 2026-12-05); they alternate round by round in one process, one thread, and their
gradients are compared.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle.baselines import BPClient  # noqa: E402
from baffle.data.dataset import Dataset  # noqa: E402
from baffle.engine.batched.engine import BatchedEngine  # noqa: E402
from baffle.models import build_model  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402

CLIENTS, BATCH, POOL = 10, 128, 2_560


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="timed rounds per variant")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = Dataset(torch.randn(POOL, 3, 32, 32, generator=g), torch.randint(0, 10, (POOL,), generator=g), 10, "bench")
    torch.manual_seed(0)
    model = build_model("rf_white", in_channels=3)
    variants = {"stored rows": (model, BatchedEngine(512)), "whole model": (copy.deepcopy(model), BatchedEngine(512, feature_cache_mb=0))}
    parts = np.array_split(np.arange(POOL), CLIENTS)
    clients = {name: [BPClient(i, data, parts[i], m, batch_size=BATCH, seed=i, trainable=["classifier.*"], engine=eng)
                      for i in range(CLIENTS)] for name, (m, eng) in variants.items()}
    for name in variants:  # warm-up: every pool sample once through each variant (fills the store)
        for _ in range(POOL // (CLIENTS * BATCH)):
            for c in clients[name]:
                c.gradient(None)
    times: dict[str, list[float]] = {n: [] for n in variants}
    gap = 0.0
    for _ in range(args.steps):
        grads = {}
        for name in variants:
            t0 = time.perf_counter()
            grads[name] = [c.gradient(None)[0] for c in clients[name]]
            times[name].append(time.perf_counter() - t0)
        gap = max(gap, max(float(np.abs(a - b).max()) for a, b in zip(*grads.values())))
    med = {n: statistics.median(t) for n, t in times.items()}
    for n, t in med.items():
        print(f"{n:12s} {t:.4f} s per 10-client FedSGD round (median of {args.steps})")
    speedup = med["whole model"] / med["stored rows"]
    print(f"speed-up {speedup:.1f}x; largest gradient difference {gap:.2e}; load {os.getloadavg()[0]:.2f}")
    write_json(results_dir(__file__) / "bp_stored_rows.json", {
        "case": "rf_white classifier, 10 clients x 128 samples, FedSGD", "steps": args.steps, "threads": 1,
        "median_s": med, "speedup": speedup, "max_abs_grad_diff": gap, "loadavg": os.getloadavg()[0]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
