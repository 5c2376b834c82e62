"""The prefix cache's frozen-stage compare once per engine call (since 2026-12-05) against before every forward.

    .venv/bin/python benchmarks/prefix_call_compare.py [--reps 5]   # ~2 minutes alone; JSON in benchmarks/results/

One forward-only client step of MiniLM-L6 on VADER sentences (the pinned all-MiniLM-L6-v2 weights, batch 32, K=20,
experiments/text_subsets.toml's setting) for a head-only and a top-block subset, each step on a new minibatch as in a
run. The "before" variant is the same code with ``PrefixCache.engine_call`` made a no-op, which is exactly the
previous path: the cache compared the frozen stages (for the head, the whole 22.7M-parameter encoder, 91 MB) with its
snapshot before each of the K+1 forwards. Variants alternate step by step in one process, one thread; their loss
differences are compared.
"""

from __future__ import annotations

import argparse
import contextlib
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
from baffle.prefix import PrefixCache  # noqa: E402
from baffle.protocol import noise  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402
from baffle.sim.factory import build_model_for, load_data  # noqa: E402

SUBSETS = {"head": ["classifier.*"], "top block + head": ["bert.blocks.5.*", "classifier.*"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = Config()
    cfg.apply_overrides(["data.name=vader", "model.name=minilm", "data.train_subset=2000", "data.test_subset=100",
                         "data.eval_train_samples=0"])
    cfg.validate()
    train, _ = load_data(cfg)
    model = build_model_for(cfg, train)
    real = PrefixCache.engine_call
    before = contextlib.contextmanager(lambda self: (yield self))  # no-op: every forward compares, as before
    rng = np.random.default_rng(0)
    rows = []
    for name, patterns in SUBSETS.items():
        params = estimator.select_parameters(model, patterns)
        times: dict[str, list[float]] = {"once per call": [], "every forward (before)": []}
        identical = True
        for rep in range(args.reps + 1):  # the first rep warms up: not timed
            idx = rng.choice(len(train), 32, replace=False)
            x, y = train.x[idx], train.y[idx]
            seeds = noise.round_seeds(0, rep + 1, 20)
            out = {}
            for variant in times:
                PrefixCache.engine_call = real if variant == "once per call" else before  # type: ignore[method-assign]
                xv = x.clone()  # a new input object for each variant: both start from a cold cache state
                t0 = time.perf_counter()
                out[variant] = loss_differences(model, params, xv, y, seeds, 1e-3, "forward")
                if rep:
                    times[variant].append(time.perf_counter() - t0)
            identical = identical and bool(np.array_equal(*out.values()))
        PrefixCache.engine_call = real  # type: ignore[method-assign]
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"subset": name, "K": 20, "batch": 32, "seconds": times, "median_s": med,
                     "speedup": med["every forward (before)"] / med["once per call"], "bit_identical": identical})
        print(f"{name}: {med['once per call']:.3f} s vs {med['every forward (before)']:.3f} s per client step "
              f"({rows[-1]['speedup']:.2f}x); loss differences {'bit-identical' if identical else 'DIFFER'}", flush=True)
    write_json(results_dir(__file__) / "prefix_call_compare.json", {"reps": args.reps, "load_avg": os.getloadavg(), "rows": rows})
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
