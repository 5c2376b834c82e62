"""Backprop capacity check of the random-feature models (``rf_cnn``, ``rf_white``; :mod:`baffle.models_rf`): what
their classifier can reach when trained with exact gradients on the frozen random features, for several widths and
pooling grids (``rf_white``: also with the filters whitened by the training set's own patch covariance instead of the
data-free prior, ``--whiten data``, the comparison the prior is judged by).

This is the ceiling forward-only training of the classifier chases, and how its shape was chosen: the estimator
pays for every trained parameter (error ~ sqrt(n / K)), so the shape is the smallest whose ceiling clears the
target with room. Central training (not federated), Adam, batch 128, the whole test set, one seed per shape.

    python experiments/rf_capacity.py [--set data.name=fashion_mnist] [--shapes 32x4,64x4] [--epochs 8]
    python experiments/rf_capacity.py --model rf_white --whiten prior,data --shapes 64x3,128x3 --set data.name=cifar10_jpeg ...
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
from baffle.models_rf import RF_CNN, RF_WHITE, RandomFeatureCNN, WhitenedRandomFeatures
from baffle.records.results import write_json
from baffle.sim.evaluate import evaluate
from baffle.sim.factory import load_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides (data.*)")
    ap.add_argument("--shapes", default="16x4,32x4,64x4,32x7", help="CHANNELSxGRID,... (kernel 5x5)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lrs", default="0.001,0.003")
    ap.add_argument("--out", default="docs/results/rf_capacity_fashion.json")
    ap.add_argument("--model", choices=("rf_cnn", "rf_white"), default="rf_cnn", help="rf_white: SHAPES are FILTERSxGRID")
    ap.add_argument("--whiten", default="prior", help="rf_white: prior (the model's), data (the training set's patch covariance), or both")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = Config()
    cfg.apply_overrides(["data.name=fashion_mnist", "data.image_size=28", "data.test_subset=0", *args.set])
    cfg.validate()
    train, test = load_data(cfg)
    rows = []
    variants = [(shape, w) for shape in args.shapes.split(",") for w in (args.whiten.split(",") if args.model == "rf_white" else [""])]
    # the training set's patch covariance depends on the data alone: computed once for every shape and lr that uses it
    data_cov = data_patch_covariance(train.x, int(RF_WHITE["kernel_size"])) if any(w == "data" for _, w in variants) else None
    for shape, whiten in variants:
        channels, grid = (int(v) for v in shape.split("x"))
        for lr in (float(v) for v in args.lrs.split(",")):
            torch.manual_seed(0)
            if args.model == "rf_cnn":
                model = RandomFeatureCNN(train.x.shape[1], 10, image_size=train.x.shape[-1], channels=channels,
                                         kernel_size=RF_CNN["kernel_size"], grid=grid)
            else:
                prior = data_cov if whiten == "data" else None
                shape_kw = {k: v for k, v in RF_WHITE.items() if k not in ("filters", "grid")}
                model = WhitenedRandomFeatures(train.x.shape[1], 10, image_size=train.x.shape[-1], filters=channels, grid=grid,
                                               prior=prior, **shape_kw)
            with torch.no_grad():  # the frozen bottom once, as the batched engine computes it once per call
                feats = torch.cat([model.features(train.x[i : i + 2000]) for i in range(0, len(train), 2000)])
            opt = torch.optim.Adam(model.classifier.parameters(), lr=lr)
            rng = np.random.default_rng(0)
            curve, t0 = [], time.perf_counter()
            for epoch in range(1, args.epochs + 1):
                for idx in np.array_split(rng.permutation(len(train)), len(train) // 128):
                    i = torch.from_numpy(idx)
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model.classifier(feats[i]), train.y[i]).backward()
                    opt.step()
                acc, _ = evaluate(model, test)
                curve.append({"epoch": epoch, "test_acc": acc})
            rows.append({"model": args.model, "whiten": whiten or None, "channels": channels, "grid": grid, "lr": lr,
                         "trained_params": num_parameters(model.classifier),
                         "curve": curve, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{args.model} {whiten} {channels:4d} ch, {grid}x{grid} grid, lr {lr:g}: {rows[-1]['trained_params']:6d} trained params  "
                  + "  ".join(f"{c['epoch']}: {100 * c['test_acc']:.2f}%" for c in curve), flush=True)
    write_json(Path(args.out), {"dataset": cfg.data.name, "image_size": cfg.data.image_size,
                                "kernel_size": RF_CNN["kernel_size"] if args.model == "rf_cnn" else RF_WHITE["kernel_size"],
                                "optimizer": "adam, batch 128, classifier only (features frozen at seed 0), central", "rows": rows})
    return 0


def data_patch_covariance(x: torch.Tensor, k: int, n: int = 100_000) -> torch.Tensor:
    """Covariance of ``n`` random k x k patches of the training images (seed 0): what ZCA whitening would use. Not
    available to a federation (no party sees the images), which is why rf_white uses a prior; measured only to say
    what the prior costs."""
    g = torch.Generator().manual_seed(0)
    i = torch.randint(0, x.shape[0], (n,), generator=g)
    r = torch.randint(0, x.shape[-2] - k + 1, (n,), generator=g)
    c = torch.randint(0, x.shape[-1] - k + 1, (n,), generator=g)
    win = torch.arange(k)
    rows = (r[:, None] + win)[:, :, None].expand(n, k, k)
    cols = (c[:, None] + win)[:, None, :].expand(n, k, k)
    patches = x[i[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows[:, None], cols[:, None]]
    return torch.cov(patches.reshape(n, -1).double().T)


if __name__ == "__main__":
    raise SystemExit(main())
