"""Wall time of local forward-only steps (``run.method=baffle_multistep``) against the one-step default at equal
client forward passes: where the time of a multistep round goes now that the server replays one trajectory.

One process, one thread, the variants alternated: each pair runs the default job's first ``--rounds`` rounds and
``baffle_multistep`` with S = ``--steps`` local steps for rounds / S rounds (the same forward passes per client and
the same samples), both from a fresh build. Prints a table and writes benchmarks/results/multistep_cost.json.

    .venv/bin/python benchmarks/multistep_cost.py [--rounds 300] [--steps 4] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch


def timed(overrides: list[str]) -> dict:
    from baffle.config import Config
    from baffle.sim.loop import Simulation

    cfg = Config()
    cfg.apply_overrides(["run.threads=1", "run.checkpoint_every=0", *overrides])
    cfg.validate()
    sim = Simulation(cfg, None, progress=False)
    t_server = 0.0
    strategy = sim.fed.strategy
    apply = strategy.apply_loss_diffs

    def timed_apply(*args, **kwargs):  # the server's share: rebuild (replay) and step
        nonlocal t_server
        t0 = time.perf_counter()
        out = apply(*args, **kwargs)
        t_server += time.perf_counter() - t0
        return out

    strategy.apply_loss_diffs = timed_apply
    t0 = time.perf_counter()
    for r in range(cfg.run.rounds):
        sim.runner.run_round(r)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "server_s": t_server, "rest_s": wall - t_server, "forward_passes": sim.fed.counters.forward_passes,
            "forward_samples": sim.fed.counters.forward_samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    if args.rounds % args.steps:
        raise SystemExit(f"--rounds {args.rounds} must be a multiple of --steps {args.steps}")
    torch.set_num_threads(1)
    variants = {
        "baffle (default)": [f"run.rounds={args.rounds}"],
        f"baffle_multistep S={args.steps}": [f"run.rounds={args.rounds // args.steps}", "run.method=baffle_multistep",
                                             f"federation.local_steps={args.steps}", "federation.local_lr=0.003"],
    }
    load0 = os.getloadavg()
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    timed(["run.rounds=5"])  # warm-up: imports, data cache, kernels
    for _ in range(args.pairs):
        for name, ov in variants.items():
            runs[name].append(timed(ov))
    load1 = os.getloadavg()
    base = statistics.median(r["wall_s"] for r in runs["baffle (default)"])
    rows = []
    for name, rs in runs.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        rows.append({"variant": name, "wall_s": med("wall_s"), "server_s": med("server_s"), "rest_s": med("rest_s"),
                     "vs_default": med("wall_s") / base, "forward_passes": rs[0]["forward_passes"],
                     "forward_samples": rs[0]["forward_samples"], "walls": [round(r["wall_s"], 2) for r in rs]})
    out = {"rounds": args.rounds, "steps": args.steps, "pairs": args.pairs, "load_start": load0, "load_end": load1,
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows}
    path = Path("benchmarks/results/multistep_cost.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"load average start {load0[0]:.2f}, end {load1[0]:.2f}; {torch.backends.cpu.get_cpu_capability()}; "
          f"median of {args.pairs} alternated runs, one thread")
    print("| variant | wall s | server (rebuild + step) s | clients and the rest s | vs default | client forward passes | forward samples |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['wall_s']:.2f} | {r['server_s']:.2f} | {r['rest_s']:.2f} | {r['vs_default']:.2f}x | "
              f"{r['forward_passes']:,} | {r['forward_samples']:,} |")


if __name__ == "__main__":
    main()
