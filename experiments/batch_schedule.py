"""SCREEN (issue 16 item 2, "K and batch schedules"): a growing minibatch per pass at the default job's budget.

Why it might win: the estimate's error is about n|g_B|^2/K, and |g_B|^2 = |g|^2 + tr(Sigma)/B. Early in training the
true gradient dominates and a small minibatch costs nothing; near convergence the minibatch noise dominates and a larger
one removes it (experiments/pass_budget.toml: 64 samples per pass instead of 8 gained 1.8 points at 8x the samples). A
schedule that spends the same forward samples unevenly, few early and many late, keeps the number of passes and the
compute of the default job.

Real forward-only runs (the simulator's own rounds, `baffle.sim.rounds.RoundRunner`) of the default job (`baffle run`:
3,000 rounds, whole test set), where before each round every client's sampler is set to the schedule's batch size. The
schedules all average 8 samples per pass, so every run pushes the same forward samples through the same passes (the
script prints and records both). Not a product feature: the server's plan and the Flower app keep one batch size.

    python experiments/batch_schedule.py                       # every schedule, seeds 0 1 2
    python experiments/batch_schedule.py --schedules step --seeds 1
Results: experiments/results/batch_schedule/<schedule>_seed<k>.json, and a table
(experiments/results/batch_schedule.md) from every JSON there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

#: batch size for progress t = round / rounds in [0, 1); each averages 8 over 3,000 rounds
SCHEDULES = {
    "const8": lambda t: 8,
    "step4to12": lambda t: 4 if t < 0.5 else 12,
    "linear4to12": lambda t: 4 + int(9 * t),  # 4, 5, ..., 12 in nine equal stretches
    "linear2to14": lambda t: 2 + int(13 * t),  # 2, ..., 14 in thirteen equal stretches
}
OUT = Path("experiments/results/batch_schedule")


def run(schedule: str, seed: int, rounds: int) -> dict:
    from baffle.config import Config
    from baffle.records.metrics import make_summary
    from baffle.sim.loop import Simulation

    size = SCHEDULES[schedule]
    top = max(size(r / rounds) for r in range(rounds))
    cfg = Config()
    # the default job, with the server's per-upload sample bound raised to the schedule's largest batch
    cfg.apply_overrides([f"run.seed={seed}", f"run.rounds={rounds}", "run.threads=1", "run.checkpoint_every=0",
                         "data.test_subset=0", f"federation.batch_size={top}"])
    cfg.validate()
    torch.set_num_threads(1)
    sim = Simulation(cfg, None, progress=False)
    t0 = time.perf_counter()
    for r in range(rounds):
        b = size(r / rounds)
        for c in sim.fed.clients:
            c.sampler.batch_size = b
        sim.runner.run_round(r)
    wall = time.perf_counter() - t0
    row = sim.evaluate(rounds)
    summary = make_summary(cfg, [row], sim.fed.counters)
    passes = sim.fed.counters.forward_passes
    return {"schedule": schedule, "seed": seed, "rounds": rounds, "final_test_acc": summary["final_test_acc"],
            "forward_passes": passes, "forward_samples": sim.fed.counters.forward_samples,
            "mean_batch": sum(size(r / rounds) for r in range(rounds)) / rounds, "train_wall_s": round(wall, 1)}


def table() -> str:
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["schedule"], []).append(r)
    lines = ["| schedule | seeds | final acc % (mean ± sd) | per seed | mean batch | forward passes | forward samples |",
             "|---|---:|---|---|---:|---:|---:|"]
    for name in SCHEDULES:
        rs = sorted(by.get(name, []), key=lambda r: r["seed"])
        if not rs:
            continue
        accs = [100 * r["final_test_acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {name} | {len(rs)} | {statistics.mean(accs):.2f} ± {sd:.2f} | {', '.join(f'{a:.2f}' for a in accs)} | "
                     f"{rs[0]['mean_batch']:.2f} | {rs[0]['forward_passes']:,} | {rs[0]['forward_samples']:,} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=3000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.schedules:
            path = OUT / f"{name}_seed{seed}.json"
            if path.exists() and json.loads(path.read_text())["rounds"] == args.rounds:
                print(f"{path} exists, kept")
                continue
            res = run(name, seed, args.rounds)
            path.write_text(json.dumps(res, indent=1) + "\n")
            print(json.dumps(res), flush=True)
    text = ("# Batch-size schedules at the default job's budget (screen)\n\nGenerated by `python experiments/batch_schedule.py` "
            "(see its docstring). The default job (3,000 rounds, whole MNIST test set), every client's minibatch per pass "
            "set by the schedule before each round; equal forward passes and samples in every row.\n\n" + table() + "\n")
    (OUT.parent / "batch_schedule.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
