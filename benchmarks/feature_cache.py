"""The batched engine with its feature cache (a frozen bottom's rows kept across calls) against without it.

    .venv/bin/python benchmarks/feature_cache.py [--reps 5]   # ~3 minutes alone on a quiet machine; JSON in benchmarks/results/

One forward-only round of 10 clients' fused minibatches drawn from a pool of samples, as ``baffle run`` evaluates it, for
models trained through ``model.trainable``: rf_cnn's classifier at experiments/fashion_rf_k1000.toml's K=1000 (10 x 128
samples) and lenet_small's second stage + classifier (K=20, 10 x 32). Two regimes:
- ``steady``: every pool sample already seen (a run's state after its first few hundred rounds: 1,280 draws a round
  from 60,000 samples leave ~1% unseen after 200 rounds). Both engines answer the same rounds;
- ``cold``: every row new to the cache (a run's first round): what digesting and storing rows adds.
Variants alternate call by call in one process, one thread; their loss differences are compared.
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
from baffle.models import build_model  # noqa: E402
from baffle.protocol import noise  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402

CASES = [  # (name, model, image size, trainable, K, clients x samples, pool)
    ("rf_cnn classifier (fashion_rf_k1000.toml)", "rf_cnn", 28, ["classifier.*"], 1000, (10, 128), 6000),
    ("lenet_small features.4 + classifier", "lenet_small", 14, ["features.4.*", "classifier.*"], 20, (10, 32), 2000),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, model_name, size, trainable, K, (clients, batch), pool in CASES:
        torch.manual_seed(0)
        model = build_model(model_name, image_size=size)
        params = estimator.select_parameters(model, trainable)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(pool + (args.reps + 1) * clients * batch, 1, size, size, generator=g)
        y = torch.randint(0, 10, (x.shape[0],), generator=g)
        rng = np.random.default_rng(2)
        engines = {"cache": BatchedEngine(), "no cache": BatchedEngine(feature_cache_mb=0)}
        seen = engines["cache"]
        for b0 in range(0, pool, clients * batch):  # the pool's rows into the cache (untimed)
            seen.multi_client(model, params, [(x[b0 : b0 + clients * batch], y[b0 : b0 + clients * batch])],
                              noise.round_seeds(0, 0, 1), 1e-3)
        fresh = pool  # rows never seen, for the cold regime
        times: dict[str, dict[str, list[float]]] = {"steady": {k: [] for k in engines}, "cold": {k: [] for k in engines}}
        gap = 0.0
        identical = True
        for rep in range(args.reps + 1):  # the first rep traces and warms up: not timed
            seeds = noise.round_seeds(0, rep + 1, K)
            for regime in ("steady", "cold"):
                if regime == "steady":
                    picks = [rng.choice(pool, batch, replace=False) for _ in range(clients)]
                else:
                    picks = [np.arange(fresh + c * batch, fresh + (c + 1) * batch) for c in range(clients)]
                    fresh += clients * batch
                batches = [(x[i], y[i]) for i in picks]
                out = {}
                for variant, eng in engines.items():
                    t0 = time.perf_counter()
                    out[variant] = np.stack(eng.multi_client(model, params, batches, seeds, 1e-3, "forward"))
                    if rep:
                        times[regime][variant].append(time.perf_counter() - t0)
                gap = max(gap, float(np.abs(out["cache"] - out["no cache"]).max()))
                identical = identical and bool(np.array_equal(out["cache"], out["no cache"]))
        med = {r: {k: statistics.median(v) for k, v in t.items()} for r, t in times.items()}
        row = {"case": name, "K": K, "clients": clients, "batch": batch, "pool": pool, "seconds": times, "median_s": med,
               "speedup_steady": med["steady"]["no cache"] / med["steady"]["cache"],
               "cold_overhead": med["cold"]["cache"] / med["cold"]["no cache"] - 1.0,
               "cached_rows": len(seen.features),
               "cache_mb": sum(t[0].numel() * t.element_size() for t in seen.features.store.values()) * len(seen.features) / 2**20,
               "max_abs_loss_difference_gap": gap, "bit_identical": identical}
        rows.append(row)
        print(f"{name}: steady {med['steady']['cache']:.3f} s vs {med['steady']['no cache']:.3f} s per round "
              f"({row['speedup_steady']:.2f}x); cold {med['cold']['cache']:.3f} vs {med['cold']['no cache']:.3f} s "
              f"({100 * row['cold_overhead']:+.1f}%); {row['cached_rows']} rows in {row['cache_mb']:.1f} MiB; "
              f"loss differences {'bit-identical' if identical else f'agree to {gap:.1e}'}", flush=True)
    write_json(results_dir(__file__) / "feature_cache.json", {"reps": args.reps, "load_avg": os.getloadavg(), "rows": rows})
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
