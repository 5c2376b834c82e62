"""Cheap screen of the server-side K-vector transforms (baffle.shaping) before spending real runs on them.

At a few LeNet/MNIST states (fresh, and after some backprop steps) and one minibatch of 320 samples (the
10 clients x 32 of a round), compute the exact gradient with autograd and the REAL forward-only loss
differences (``baffle.engine.loop.loss_differences``), then the cosine between the exact gradient and the estimate
rebuilt from the raw / baseline-subtracted / rank-shaped K-vector, over several seed sets. A higher cosine at
the same forward passes is a better estimate; only the winners go to experiments/beyond_paper.toml.

    python experiments/screen_estimators.py [--reps 3] [--out docs/results/screen_estimators.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from baffle import estimator
from baffle.engine.loop import loss_differences
from baffle.protocol import noise
from baffle.protocol.schemes import forward_passes
from baffle.data.registry import load_dataset
from baffle.models import build_model
from baffle.shaping import shape_diffs
from baffle.reconstruct import reconstruct
from baffle.records.results import write_json

VARIANTS = {"plain": ("none", "none"), "baseline": ("mean", "none"), "rank": ("none", "rank"), "baseline+rank": ("mean", "rank")}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--K", type=int, default=100)
    ap.add_argument("--sigmas", default="1e-3,1e-4")
    ap.add_argument("--states", default="0,100", help="backprop Adam steps before each measured state")
    ap.add_argument("--out", default="docs/results/screen_estimators.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train = load_dataset("mnist", split="train", num_samples=10000)
    rng = np.random.default_rng(0)
    rows = []
    t0 = time.perf_counter()
    for steps in map(int, args.states.split(",")):
        torch.manual_seed(0)
        model = build_model("lenet")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.from_numpy(rng.choice(len(train), 64, replace=False))
            opt.zero_grad()
            F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
            opt.step()
        params = estimator.select_parameters(model)
        n = estimator.num_elements(params)
        idx = torch.from_numpy(rng.choice(len(train), 320, replace=False))
        x, y = train.x[idx], train.y[idx]
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for _, p in params]).numpy().astype(np.float64)
        for sigma in map(float, args.sigmas.split(",")):
            for scheme, K in (("forward", args.K), ("central", args.K // 2)):  # equal forward passes
                cos: dict[str, list[float]] = {v: [] for v in VARIANTS}
                for rep in range(args.reps):
                    seeds = noise.round_seeds(1234 + rep, steps, K)
                    d = loss_differences(model, params, x, y, seeds, sigma, scheme)
                    for v, (b, s) in VARIANTS.items():
                        cos[v].append(cosine(reconstruct(shape_diffs(d, b, s), seeds, sigma, n), g))
                row = {"bp_steps": steps, "loss": float(loss), "sigma": sigma, "scheme": scheme, "K": K,
                       "forward_passes": forward_passes(K, scheme),
                       **{f"cos_{v}": float(np.mean(c)) for v, c in cos.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    ideal = float(np.sqrt(args.K / (args.K + n)))  # E cos of the projected-gradient estimate, (1/K) sum (eps.g) eps
    out = {"n_params": n, "ideal_forward_cos_approx": ideal, "reps": args.reps, "rows": rows, "seconds": time.perf_counter() - t0}
    write_json(args.out, out)
    print(f"wrote {args.out} ({out['seconds']:.0f} s); cos of the sigma->0 limit at K={args.K}: ~{ideal:.3f}")


if __name__ == "__main__":
    main()
