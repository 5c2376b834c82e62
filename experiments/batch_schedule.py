"""SCREEN (issue 16 item 2, "K and batch schedules"): a minibatch or a K that changes along the default job's budget.

Why it might win: the estimate's error is about n|g_B|^2/K, and |g_B|^2 = |g|^2 + tr(Sigma)/B. Early in training the
true gradient dominates and a small minibatch costs nothing; near convergence the minibatch noise dominates and a larger
one removes it (experiments/pass_budget.toml: 64 samples per pass instead of 8 gained 1.8 points at 8x the samples). A
schedule that spends the same forward samples unevenly, few early and many late, keeps the number of passes and the
compute of the default job.

Real forward-only runs (the simulator's own rounds, `baffle.sim.rounds.RoundRunner`) of the default job (`baffle run`:
3,000 rounds, whole test set), where before each round every client's sampler is set to the schedule's batch size. The
schedules all average 8 samples per pass, so every run pushes the same forward samples through the same passes (the
script prints and records both). Not a product feature: the server's plan and the Flower app keep one batch size.

K schedules (the ``K...`` rows, at the default job since 2026-12-04: 32 samples per pass) set the server's K before each
round (the plan's seeds, the clients' perturbations and the upload validation all follow it); they all average K + 1 = 21
forward passes per round, so again equal passes and samples. Why one might win: the direction term of the error,
n |g_B|^2 / K, is largest early, when |g|^2 is large (experiments/estimate_error.py), so more directions early and fewer
late could buy a better start for free; or the reverse, since late steps set the final accuracy.

    python experiments/batch_schedule.py                       # every schedule, seeds 0 1 2
    python experiments/batch_schedule.py --schedules K30to10 --seeds 1
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
#: K for progress t at batch 32; each averages K = 20 over 3,000 rounds
K_SCHEDULES = {
    "K20": lambda t: 20,  # the default job itself: checks the harness against its real runs (default_batch.toml B32)
    "K10to30": lambda t: 10 if t < 0.5 else 30,
    "K30to10": lambda t: 30 if t < 0.5 else 10,
    "K10to30linear": lambda t: 10 + int(21 * t),  # 10, ..., 30 in 21 equal stretches
}
K_BATCH = 32
OUT = Path("experiments/results/batch_schedule")


def run(schedule: str, seed: int, rounds: int) -> dict:
    """One real run of the default job with the schedule applied before every round."""
    if schedule in K_SCHEDULES:
        k_of = K_SCHEDULES[schedule]

        def before_round(sim, t: float) -> None:  # one config: the plan, the validation and the costs read its K
            sim.fed.cfg.estimator.K = k_of(t)

        res = schedule_run(seed, rounds, K_BATCH, before_round)
        return {"schedule": schedule, **res, "mean_batch": K_BATCH, "mean_K": sum(k_of(r / rounds) for r in range(rounds)) / rounds}
    size = SCHEDULES[schedule]

    def set_batch(sim, t: float) -> None:
        for c in sim.fed.clients:
            c.sampler.batch_size = size(t)

    # the server's per-upload sample bound raised to the schedule's largest batch
    res = schedule_run(seed, rounds, max(size(r / rounds) for r in range(rounds)), set_batch)
    return {"schedule": schedule, **res, "mean_batch": sum(size(r / rounds) for r in range(rounds)) / rounds}


def schedule_run(seed: int, rounds: int, batch: int, before_round) -> dict:
    """The default job at ``federation.batch_size=batch``, ``before_round(sim, round / rounds)`` before each round."""
    from baffle.config import Config
    from baffle.records.metrics import make_summary
    from baffle.sim.loop import Simulation

    cfg = Config()
    cfg.apply_overrides([f"run.seed={seed}", f"run.rounds={rounds}", "run.threads=1", "run.checkpoint_every=0",
                         "data.test_subset=0", f"federation.batch_size={batch}"])
    cfg.validate()
    torch.set_num_threads(1)
    sim = Simulation(cfg, None, progress=False)
    assert sim.fed.strategy.cfg is sim.fed.cfg
    t0 = time.perf_counter()
    for r in range(rounds):
        before_round(sim, r / rounds)
        sim.runner.run_round(r)
    wall = time.perf_counter() - t0
    summary = make_summary(cfg, [sim.evaluate(rounds)], sim.fed.counters)
    return {"seed": seed, "rounds": rounds, "final_test_acc": summary["final_test_acc"],
            "forward_passes": sim.fed.counters.forward_passes, "forward_samples": sim.fed.counters.forward_samples,
            "train_wall_s": round(wall, 1)}


def table() -> str:
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    by: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        by.setdefault((r["schedule"], r["rounds"]), []).append(r)
    lines = ["| schedule | rounds | seeds | final acc % (mean ± sd) | per seed | mean batch | mean K | forward passes | forward samples |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for name, rounds in sorted(by, key=lambda k: (k[1], [*SCHEDULES, *K_SCHEDULES].index(k[0]))):
        rs = sorted(by[(name, rounds)], key=lambda r: r["seed"])
        accs = [100 * r["final_test_acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        lines.append(f"| {name} | {rounds:,} | {len(rs)} | {statistics.mean(accs):.2f} ± {sd:.2f} | {', '.join(f'{a:.2f}' for a in accs)} | "
                     f"{rs[0]['mean_batch']:.2f} | {rs[0].get('mean_K', 20):.2f} | {rs[0]['forward_passes']:,} | "
                     f"{rs[0]['forward_samples']:,} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=[*SCHEDULES, *K_SCHEDULES],
                    help="default: the batch schedules (the K schedules are named: K20 K10to30 K30to10 K10to30linear)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=3000)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.schedules:
            path = OUT / (f"{name}_seed{seed}.json" if args.rounds == 3000 else f"{name}_seed{seed}_r{args.rounds}.json")
            if path.exists() and json.loads(path.read_text())["rounds"] == args.rounds:
                print(f"{path} exists, kept")
                continue
            res = run(name, seed, args.rounds)
            path.write_text(json.dumps(res, indent=1) + "\n")
            print(json.dumps(res), flush=True)
    text = ("# Batch-size and K schedules at the default job's budget (screen)\n\nGenerated by `python experiments/batch_schedule.py` "
            "(see its docstring). The default job (3,000 rounds, whole MNIST test set), every client's minibatch per pass "
            f"(batch rows, at K=20) or the round's K (K rows, at batch {K_BATCH}) set by the schedule before each round; "
            "equal forward passes and samples within each group of rows.\n\n" + table() + "\n")
    (OUT.parent / "batch_schedule.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
