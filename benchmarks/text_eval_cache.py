"""A head-only MiniLM run's evaluations with the EMA's frozen part kept exact (the head cache holds) and averaged
as before 2026-12-05 (every update moved ~4.9M frozen entries by an ulp, so each evaluation re-ran the encoder).

    .venv/bin/python benchmarks/text_eval_cache.py [--evals 3]   # ~3 minutes; JSON in benchmarks/results/

The README's MiniLM example (VADER, 4 domain clients, ``model.trainable = ["classifier.*"]``, EMA 0.98): one
Simulation per variant, built the same way; before each evaluation the head takes a step and the EMA updates,
as between two evaluations of a run. Variants alternate evaluation by evaluation in this one process; each
evaluation scores the test set and the training probe, as ``baffle run`` does. Prints seconds per evaluation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle.config import Config  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402
from baffle.server.optim import EMA  # noqa: E402
from baffle.sim.loop import Simulation  # noqa: E402

README_EXAMPLE = ["data.name=vader", "model.name=minilm", "data.partition=domain", "data.num_clients=4",
                  'model.trainable=["classifier.*"]', "estimator.engine=loop", "federation.batch_size=32", "run.threads=1"]


def simulation(exact: bool) -> Simulation:
    cfg = Config()
    cfg.apply_overrides(README_EXAMPLE)
    sim = Simulation(cfg.validate(), None, progress=False)
    s = sim.fed.strategy
    if not exact:  # the EMA as it was: every entry of the state averaged, the frozen ones too
        s.ema = EMA(s.model, s.ema.decay, s.ema.warmup)
    return sim


def step(sim: Simulation, r: int, scale: float = 1e-3) -> None:
    """A stand-in for a round: move the head, update the EMA (what changes between two evaluations)."""
    s = sim.fed.strategy
    with torch.no_grad():
        for _, p in s.params:
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(r)) * scale)
    s._after_step(r)


def alternate(sims: dict[str, Simulation], evals: int, scale: float = 1e-3) -> tuple[dict[str, list[float]], list[dict[str, dict]]]:
    """``evals`` evaluations of each simulation, in turn, each after the same stand-in round (:func:`step`): seconds
    per evaluation by variant, and each evaluation's metrics rows by variant (``benchmarks/rf_eval_cache.py`` too)."""
    times: dict[str, list[float]] = {k: [] for k in sims}
    rows: list[dict[str, dict]] = []
    for e in range(evals):
        rows.append({})
        for name, sim in sims.items():
            step(sim, e, scale)
            t0 = time.perf_counter()
            rows[e][name] = sim.evaluate(e + 1)
            times[name].append(time.perf_counter() - t0)
            print(f"evaluation {e + 1} {name}: {times[name][-1]:.2f} s (test acc {rows[e][name]['test_acc']:.4f})", flush=True)
    return times, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--evals", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sims = {"exact frozen EMA (head cache holds)": simulation(True), "averaged frozen EMA (before)": simulation(False)}
    times, _ = alternate(sims, args.evals)
    accs = {name: sim.fed.strategy.eval_weights()["classifier.weight"].sum().item() for name, sim in sims.items()}
    out = {"evals": args.evals, "seconds": times, "load_avg": os.getloadavg()[0], "head_weight_sums": accs}
    write_json(results_dir(__file__) / "text_eval_cache.json", out)
    for name, t in times.items():
        print(f"{name}: first {t[0]:.1f} s, later {sum(t[1:]) / max(1, len(t) - 1):.1f} s per evaluation")
    print(f"load average {out['load_avg']:.1f}")


if __name__ == "__main__":
    main()
