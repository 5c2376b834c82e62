"""The prefix cache's row store (a frozen bottom's output per sentence kept across rounds) against none.

    .venv/bin/python benchmarks/prefix_rows.py [--sentences 320] [--epochs 2]   # ~4 minutes alone; JSON in benchmarks/results/

Forward-only client steps of MiniLM-L6 on VADER (the pinned all-MiniLM-L6-v2 weights, batch 32, K=20, sigma 1e-3:
experiments/text_subsets.toml's setting) over ``--epochs`` passes of ``--sentences`` training sentences, for a
head-only and a top-block subset: epoch 1 fills the store (each sentence's bottom computed alone), later epochs read
it, as every round after a client's first pass over its data does (a 300-round text_subsets.toml run makes ~19
passes). "no store" is the same code with ``estimator.feature_cache_mb = 0`` (row_cache_bytes 0): the previous path.
Two models with the same weights, one per variant (turning the store off empties it); the variants alternate step by
step in one process, one thread. Their loss differences agree to float32's last bits (the largest gap is printed).
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
from baffle.config import Config  # noqa: E402
from baffle.engine.loop import loss_differences  # noqa: E402
from baffle.protocol import noise  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402
from baffle.sim.factory import build_model_for, load_data  # noqa: E402

SUBSETS = {"head": ["classifier.*"], "top block + head": ["bert.blocks.5.*", "classifier.*"]}
STORE = {"row store": 1024 * 2**20, "no store (before)": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=320, help="training sentences (a multiple of 32)")
    ap.add_argument("--epochs", type=int, default=2, help="passes over them (epoch 1 fills the store)")
    args = ap.parse_args()
    if args.sentences < 32 or args.sentences % 32 or args.epochs < 2:
        ap.error("--sentences must be a positive multiple of 32 and --epochs >= 2")
    torch.set_num_threads(1)
    cfg = Config()
    cfg.apply_overrides(["data.name=vader", "model.name=minilm", f"data.train_subset={args.sentences}",
                         "data.test_subset=100", "data.eval_train_samples=0"])
    cfg.validate()
    train, _ = load_data(cfg)
    rows = []
    for name, patterns in SUBSETS.items():
        models = {v: build_model_for(cfg, train) for v in STORE}  # the same pinned weights, a store each
        times: dict[str, dict[int, list[float]]] = {v: {e: [] for e in range(args.epochs)} for v in STORE}
        gap = 0.0
        rng = np.random.default_rng(0)
        for epoch in range(args.epochs):
            order = rng.permutation(len(train))
            for step, start in enumerate(range(0, len(train), 32)):
                idx = order[start : start + 32]
                x, y = train.x[idx], train.y[idx]
                seeds = noise.round_seeds(0, epoch * 1000 + step + 1, 20)
                out = {}
                for v, bytes_ in STORE.items():
                    model = models[v]
                    t0 = time.perf_counter()
                    out[v] = loss_differences(model, estimator.select_parameters(model, patterns), x.clone(), y, seeds,
                                              1e-3, "forward", row_cache_bytes=bytes_)
                    times[v][epoch].append(time.perf_counter() - t0)
                gap = max(gap, float(np.abs(out["row store"] - out["no store (before)"]).max()))
        med = {v: {f"epoch {e + 1}": statistics.median(t) for e, t in ts.items()} for v, ts in times.items()}
        steady = {v: statistics.median([s for e in range(1, args.epochs) for s in times[v][e]]) for v in STORE}
        cache = models["row store"].prefix_cache
        rows.append({"subset": name, "K": 20, "batch": 32, "sentences": args.sentences, "seconds": times,
                     "median_s": med, "steady_speedup": steady["no store (before)"] / steady["row store"],
                     "first_epoch_ratio": med["row store"]["epoch 1"] / med["no store (before)"]["epoch 1"],
                     "store_mb": cache.row_bytes / 2**20, "max_abs_diff": gap})
        print(f"{name}: later epochs {steady['row store']:.3f} s vs {steady['no store (before)']:.3f} s per client step "
              f"({rows[-1]['steady_speedup']:.2f}x); epoch 1 (filling) {med['row store']['epoch 1']:.3f} s vs "
              f"{med['no store (before)']['epoch 1']:.3f} s; store {rows[-1]['store_mb']:.1f} MB for {len(cache.rows)} "
              f"sentences; largest loss-difference gap {gap:.2e}", flush=True)
    write_json(results_dir(__file__) / "prefix_rows.json", {"args": vars(args), "load_avg": os.getloadavg(), "rows": rows})
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
