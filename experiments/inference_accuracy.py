"""MNIST accuracy of federations whose clients are torch float, ONNX Runtime float, ONNX int8 or pruned.

Short runs sized to a shared 2-core machine (settings below and in each JSON). Every run is the same
federation (same data, partition, seeds, server optimizer); only the clients' runtime changes:

  torch_float   every client is the torch client (reference)
  mixed_float   half the clients are ONNX Runtime processes (numpy + onnxruntime, no torch)
  onnx_int8     every client is an ONNX client with int8 activations, float weights (baffle.onnx_quant)
  pruned_50     50% of every weight tensor pruned by magnitude at init (mask kept by the server),
                half the clients ONNX, half torch
  fedsgd        the backprop baseline with the same server (one gradient per client per round)
  torch_float_sigma1e-2, onnx_int8_sigma1e-2   (default recipe, asked for by name) the same pair at
                sigma = 1e-2, the sigma the int8 rule asks for

Two recipes:
  --recipe short    (the original table) the paper's LeNet at 28x28 on a 10,000-image subset, 100-200 rounds
  --recipe default  the `baffle run` default recipe (lenet_small 14x14, K=20, batch 8, full MNIST, 3,000 rounds)
                    run to convergence, so the cost of each client runtime is known where it matters
                    (issue 16 item 5); one seed, ~3-10 minutes per run on one core

Usage: python experiments/inference_accuracy.py [--recipe short|default] [--runs a,b] [--rounds N]
Writes experiments/results/inference_accuracy/<run>.json (short) or
experiments/results/inference_accuracy/default_recipe/<run>.json (summary + settings + metrics history).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time

import torch

from baffle.config import Config
from baffle.records.results import results_dir, write_json
from baffle.sim.loop import Simulation

OUT = results_dir(__file__) / "inference_accuracy"

BASE = [
    "data.name=mnist",
    "data.train_subset=10000",
    "data.test_subset=2000",
    "data.num_clients=10",
    "data.eval_train_samples=500",
    "model.name=lenet",
    "estimator.K=20",
    "estimator.sigma=1e-2",
    "federation.batch_size=16",
    "optim.lr=0.05",
    "optim.ema_decay=0.9",
    "optim.betas=[0.9,0.99]",  # baffle's defaults when these runs were made (experiments/default_optim.toml)
    "estimator.noise=v1",
    "run.threads=1",
    "run.checkpoint_every=0",
]

# the default recipe is Config() as it was when these runs were made (lr, betas and noise moved on 2026-12-03,
# experiments/default_optim.toml; the batch on 2026-12-04, experiments/default_batch.toml), plus what keeps a run light (every run: same data, seeds, server)
DEFAULT_BASE = ["federation.batch_size=8", "optim.lr=0.01", "optim.betas=[0.9,0.99]", "estimator.noise=v1", "run.threads=1", "run.checkpoint_every=0"]

RUNS: dict[str, list[str]] = {
    "torch_float": [],
    "mixed_float": ["federation.onnx_clients=0.5"],
    "onnx_int8": ["federation.onnx_clients=1.0", "federation.onnx_precision=int8"],
    "pruned_50": ["model.prune=0.5", "federation.onnx_clients=0.5"],
    "fedsgd": ["run.method=fedsgd"],
    # the int8 sigma rule (docs/inference-clients.md) on the default recipe, whose own sigma is 1e-3: int8 and its
    # float reference at sigma = 1e-2 (run with --recipe default --runs torch_float_sigma1e-2,onnx_int8_sigma1e-2)
    "torch_float_sigma1e-2": ["estimator.sigma=1e-2"],
    "onnx_int8_sigma1e-2": ["federation.onnx_clients=1.0", "federation.onnx_precision=int8", "estimator.sigma=1e-2"],
}
#: what a bare run covers (the sigma-1e-2 pair only means something on the default recipe, whose sigma is 1e-3)
DEFAULT_RUNS = ("torch_float", "mixed_float", "onnx_int8", "pruned_50", "fedsgd")


def run(name: str, rounds: int, recipe: str = "short") -> dict:
    cfg = Config()
    base, out = (BASE, OUT) if recipe == "short" else (DEFAULT_BASE, OUT / "default_recipe")
    every = max(1, rounds // (4 if recipe == "short" else 12))
    settings = base + [f"run.rounds={rounds}", f"run.eval_every={every}"] + RUNS[name]
    cfg.apply_overrides(settings)
    done = out / f"{name}.json"
    if done.exists() and json.loads(done.read_text())["settings"] == settings:  # resumable run by run
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out_dir = out / name
    shutil.rmtree(out_dir, ignore_errors=True)  # leftovers of a run killed before it wrote its JSON
    summary = Simulation(cfg.validate(), out_dir, progress=False).run()
    history = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    result = {"run": name, "settings": settings, "summary": summary, "history": [
        {k: h[k] for k in ("round", "test_acc", "test_loss", "wall_s")} for h in history
    ], "wall_s": round(time.perf_counter() - t0, 1)}
    write_json(out / f"{name}.json", result)
    shutil.rmtree(out_dir)  # the JSON keeps what the page needs; the run dir is scratch
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=",".join(DEFAULT_RUNS), help="comma-separated subset of: " + ", ".join(RUNS))
    ap.add_argument("--recipe", choices=["short", "default"], default="short")
    ap.add_argument("--rounds", type=int, default=None, help="default: 200 (short), 3000 (default recipe)")
    args = ap.parse_args()
    rounds = args.rounds or (200 if args.recipe == "short" else Config().run.rounds)
    names = args.runs.split(",")
    for name in names:  # every name checked before hours of compute start
        if name not in RUNS:
            raise SystemExit(f"unknown run {name!r}; choose from {', '.join(RUNS)}")
    for name in names:
        r = run(name, rounds, args.recipe)
        print(f"{name:12s} final acc {r['summary']['final_test_acc']:.4f}  wall {r['wall_s']} s", flush=True)


if __name__ == "__main__":
    main()
