"""How fast each model learns with ordinary backprop: the ceiling forward-only training chases.

Trains every model named on the command line centrally with Adam (lr 1e-2, batch 64) on MNIST (or another data
set) and reports test accuracy along the way. This is the evidence behind the default model: the paper's LeNet
(global average pooling) learns slowly even with exact gradients, while ``lenet_small`` (LeNet-5's shape) learns
fast with 5.5x fewer parameters, and the zeroth-order estimator's error grows with the parameter count.

    python experiments/bp_capacity.py [--set data.name=fashion_mnist] [--steps 1200] [--out docs/results/bp_capacity.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baffle.config import Config
from baffle.models import num_parameters
from baffle.records.results import write_json
from baffle.sim.factory import build_model_for, load_data
from baffle.sim.evaluate import evaluate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="lenet,lenet_small")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides (data.*)")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--every", type=int, default=300)
    ap.add_argument("--out", default="docs/results/bp_capacity.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in args.models.split(","):
        cfg = Config()
        cfg.apply_overrides(["data.test_subset=2000", f"model.name={name}", *args.set])
        cfg.validate()
        train, test = load_data(cfg)
        model = build_model_for(cfg, train)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        rng = np.random.default_rng(0)
        curve, t0 = [], time.perf_counter()
        for step in range(1, args.steps + 1):
            idx = torch.from_numpy(rng.choice(len(train), 64, replace=False))
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
            opt.step()
            if step % args.every == 0:
                acc, _ = evaluate(model, test)
                curve.append({"step": step, "test_acc": acc})
                model.train()
        rows.append({"model": name, "params": num_parameters(model), "dataset": cfg.data.name,
                     "image_size": cfg.data.image_size, "curve": curve, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{name:12s} {rows[-1]['params']:6d} params  " + "  ".join(f"{c['step']}: {100 * c['test_acc']:.2f}%" for c in curve))
    out = Path(args.out)
    write_json(out, {"optimizer": "adam lr 1e-2 batch 64, single process (not federated)", "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
