"""Pretrain a model centrally with ordinary backprop on a SOURCE task and save its state_dict.

The checkpoint is what forward-only fine-tuning starts from (``baffle run --init CKPT`` or ``model.init``) on a
shifted TARGET task, e.g. pretrain on MNIST digits 0-4 and fine-tune federatedly on digits 5-9:

    python experiments/pretrain.py --set data.classes=[0,1,2,3,4] --steps 600 --out results/pretrain/lenet_digits04.pt
    baffle run --init results/pretrain/lenet_digits04.pt --set data.classes=[5,6,7,8,9] \
        --set "model.trainable=[\"classifier.*\"]" --set run.rounds=100

Data and model come from the same Config keys as ``baffle run`` (``--config``/``--set``: data.*, model.name,
model.activation, model.norm, run.seed), so the saved weights fit the fine-tuning run's model exactly.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from baffle.config import Config
from baffle.protocol import streams
from baffle.records.results import write_json
from baffle.sim.factory import build_model_for, load_data
from baffle.sim.evaluate import evaluate


def pretrain(cfg: Config, steps: int, batch_size: int = 64, lr: float = 1e-3) -> tuple[torch.nn.Module, dict]:
    """Adam on the whole (source) training set, ``steps`` minibatches; returns the model and its scores."""
    if cfg.model.init or cfg.model.adapter != "none":
        raise ValueError("pretraining starts from scratch: leave model.init and model.adapter unset")
    cfg.validate()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    train, test = load_data(cfg)
    model = build_model_for(cfg, train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = streams.rng(cfg.run.seed, streams.PRETRAIN)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(train), min(batch_size, len(train)), replace=False))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
        opt.step()
    acc, loss = evaluate(model, test)
    info = {"steps": steps, "batch_size": batch_size, "lr": lr, "source_test_acc": acc, "source_test_loss": loss,
            "train_samples": len(train), "num_classes": train.num_classes, "seconds": round(time.perf_counter() - t0, 1)}
    return model, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="TOML config (data/model sections are used)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", required=True, help="where to write the state_dict (.pt); a .json with scores goes beside it")
    args = ap.parse_args(argv)
    cfg = Config.load(args.config) if args.config else Config()
    cfg.apply_overrides(args.set)
    model, info = pretrain(cfg, args.steps, args.batch_size, args.lr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    info["config"] = {"data": cfg.to_dict()["data"], "model": cfg.to_dict()["model"]}
    write_json(out.with_suffix(".json"), info)
    print(f"source-task test accuracy {100 * info['source_test_acc']:.2f}% after {args.steps} steps; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
