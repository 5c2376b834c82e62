"""A classifier-only rf_white run's evaluations with the head cache (``sim.evaluate.HeadCache``: the frozen
convolution's output of the test set and the training probe kept while only the classifier trains) and without it
(as before 2026-12-06: every evaluation put the 10,000 test images through the convolution again).

    .venv/bin/python benchmarks/rf_eval_cache.py [--evals 3] [--set data.root=PATH]   # ~3 minutes; JSON in benchmarks/results/

experiments/cifar10_rf_run.toml (CIFAR-10 JPEG copy from ../shared/data, whole test set, 500-image training probe):
one Simulation per variant, built the same way; before each evaluation the classifier takes a step and the EMA
updates, as between two evaluations of a run. Variants alternate evaluation by evaluation in this one process, one
thread; each evaluation scores the test set and the probe, as ``baffle run`` does, and both variants must report the
same accuracy and loss (the cache gives the same bits).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle.config import Config  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402
from baffle.sim.loop import Simulation  # noqa: E402
from text_eval_cache import alternate  # noqa: E402  (benchmarks/, this script's directory, is on sys.path)

RECIPE = ROOT / "experiments" / "cifar10_rf_run.toml"


def simulation(cached: bool, overrides: list[str]) -> Simulation:
    cfg = Config.load(RECIPE)
    cfg.apply_overrides(overrides)
    sim = Simulation(cfg.validate(), None, progress=False)
    if not cached:
        sim.head_cache = None
    return sim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (e.g. data.root)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sims = {"head cache": simulation(True, args.set), "no cache (before)": simulation(False, args.set)}
    times, rows = alternate(sims, args.evals, scale=1e-2)
    for e, pair in enumerate(rows):
        a, b = pair.values()
        if (a["test_acc"], a["test_loss"], a["train_loss"]) != (b["test_acc"], b["test_loss"], b["train_loss"]):
            raise SystemExit(f"the variants disagree at evaluation {e + 1}: {a['test_acc']} vs {b['test_acc']}")
    out = {"recipe": RECIPE.relative_to(ROOT).as_posix(), "evals": args.evals, "threads": 1, "seconds": times,
           "load_avg": os.getloadavg()[0]}
    write_json(results_dir(__file__) / "rf_eval_cache.json", out)
    for name, t in times.items():
        print(f"{name}: first {t[0]:.2f} s, later {sum(t[1:]) / max(1, len(t) - 1):.2f} s per evaluation")
    print(f"same accuracy and losses in every evaluation; load average {out['load_avg']:.1f}")


if __name__ == "__main__":
    main()
