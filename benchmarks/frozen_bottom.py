"""The batched engine with a frozen bottom computed once per call (since 2026-12-05) against once per chunk (before).

    .venv/bin/python benchmarks/frozen_bottom.py [--reps 5]   # ~2 minutes alone on a quiet machine; JSON in benchmarks/results/

One forward-only client step (K perturbed forwards + the unperturbed one, 10 clients' minibatches fused, as ``baffle run``
evaluates a round) for models trained through ``model.trainable``: rf_cnn's classifier on Fashion-MNIST-sized inputs
(experiments/fashion_rf.toml: K=100, 10 x 128 samples) and lenet_small's second stage + classifier (K=20, 10 x 32). The
"before" variant is the same engine with the frozen-bottom detection switched off (``Program.shared_nodes`` returns no
nodes), which is exactly the code path of the previous commit. Variants alternate call by call in one process, one
thread; the loss differences of both are compared (the plan changes, so they agree to float32 rounding, not bit for bit).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle import estimator  # noqa: E402
from baffle.engine.batched.engine import BatchedEngine  # noqa: E402
from baffle.engine.batched.program import Program  # noqa: E402
from baffle.models import build_model  # noqa: E402
from baffle.protocol import noise  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402

CASES = [  # (name, model, image size, trainable, K, clients x samples)
    ("rf_cnn classifier (fashion_rf.toml)", "rf_cnn", 28, ["classifier.*"], 100, (10, 128)),
    ("lenet_small features.4 + classifier", "lenet_small", 14, ["features.4.*", "classifier.*"], 20, (10, 32)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    real = Program.shared_nodes
    rows = []
    for name, model_name, size, trainable, K, (clients, batch) in CASES:
        torch.manual_seed(0)
        model = build_model(model_name, image_size=size)
        params = estimator.select_parameters(model, trainable)
        g = torch.Generator().manual_seed(1)
        batches = [(torch.randn(batch, 1, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g)) for _ in range(clients)]
        seeds = noise.round_seeds(0, 1, K)
        engines = {"once per call": BatchedEngine(feature_cache_mb=0), "once per chunk (before)": BatchedEngine(feature_cache_mb=0)}
        times: dict[str, list[float]] = {k: [] for k in engines}
        out: dict[str, np.ndarray] = {}
        plans: dict[str, tuple[int, int]] = {}
        for rep in range(args.reps + 1):  # the first round of calls traces and warms up: not timed
            for variant, eng in engines.items():
                Program.shared_nodes = real if variant == "once per call" else (lambda self, perturbed: frozenset())  # type: ignore[method-assign]
                t0 = time.perf_counter()
                out[variant] = np.stack(eng.multi_client(model, params, batches, seeds, 1e-3, "forward"))
                if rep:
                    times[variant].append(time.perf_counter() - t0)
                plans[variant] = (eng.last_chunk, eng.last_sub_batch)
        Program.shared_nodes = real  # type: ignore[method-assign]
        med = {k: statistics.median(v) for k, v in times.items()}
        diff = float(np.abs(out["once per call"] - out["once per chunk (before)"]).max())
        rows.append({"case": name, "K": K, "clients": clients, "batch": batch, "seconds": times, "median_s": med,
                     "speedup": med["once per chunk (before)"] / med["once per call"], "plans (members, samples)": plans,
                     "max_abs_loss_difference_gap": diff})
        print(f"{name}: {med['once per call']:.3f} s vs {med['once per chunk (before)']:.3f} s per client step "
              f"({rows[-1]['speedup']:.2f}x); plans {plans}; loss differences agree to {diff:.1e}", flush=True)
    write_json(results_dir(__file__) / "frozen_bottom.json", {"reps": args.reps, "load_avg": os.getloadavg(), "rows": rows})
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
