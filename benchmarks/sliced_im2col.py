"""The batched engine keeping each slice's input im2col for the members after the first (since 2026-12-05) against
recomputing it for every member (before), when the planner splits the batch into slices.

    .venv/bin/python benchmarks/sliced_im2col.py [--reps 3]   # ~3 minutes alone; JSON in benchmarks/results/

One forward-only client step of the paper's LeNet (``model.name=lenet``, ``model.norm=none``, 32x32, K=100, 10 clients x
32 samples fused: experiments/paper_repro.toml's FedSGD-style round). Its first convolution is not fused (no norm layer),
the planner runs one member per chunk on slices of the batch (one member's activations at 320 samples exceed the cache
bound), and before this change every one of the 101 members rebuilt every slice's im2col. The "before" variant is the
same engine with ``planner.SLICED_COLS_SHARE = 0`` (nothing kept, nothing left out of the slices), exactly the previous code path. Variants alternate call by
call in one process, one thread; the loss differences must be bit-identical (the same kernels on the same values).
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
from baffle.engine.batched import planner  # noqa: E402
from baffle.engine.batched.engine import BatchedEngine  # noqa: E402
from baffle.models import build_model  # noqa: E402
from baffle.protocol import noise  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--K", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("lenet", image_size=32, norm="none")
    params = estimator.select_parameters(model)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 1, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(10)]
    seeds = noise.round_seeds(0, 1, args.K)
    share = planner.SLICED_COLS_SHARE
    variants = {"kept per call": share, "rebuilt per member (before)": 0.0}
    engines = {k: BatchedEngine() for k in variants}
    times: dict[str, list[float]] = {k: [] for k in variants}
    out: dict[str, np.ndarray] = {}
    plans: dict[str, tuple[int, int]] = {}
    for rep in range(args.reps + 1):  # the first round of calls traces and warms up: not timed
        for variant, eng in engines.items():
            planner.SLICED_COLS_SHARE = variants[variant]
            t0 = time.perf_counter()
            out[variant] = np.stack(eng.multi_client(model, params, batches, seeds, 1e-4, "forward"))
            if rep:
                times[variant].append(time.perf_counter() - t0)
            plans[variant] = (eng.last_chunk, eng.last_sub_batch)
            print(f"  {variant}: {time.perf_counter() - t0:.2f} s", flush=True)
    planner.SLICED_COLS_SHARE = share
    med = {k: statistics.median(v) for k, v in times.items()}
    same = bool(np.array_equal(out["kept per call"], out["rebuilt per member (before)"]))
    speedup = med["rebuilt per member (before)"] / med["kept per call"]
    row = {"case": f"paper LeNet (norm none, 32x32), K={args.K}, 10 clients x 32 samples", "seconds": times, "median_s": med,
           "speedup": speedup, "plans (members, samples)": plans, "bit_identical": same}
    print(f"{row['case']}: {med['kept per call']:.2f} s vs {med['rebuilt per member (before)']:.2f} s per client step "
          f"({speedup:.2f}x); plans {plans}; loss differences bit-identical: {same}")
    write_json(results_dir(__file__) / "sliced_im2col.json", {"reps": args.reps, "load_avg": os.getloadavg(), "rows": [row]})
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
