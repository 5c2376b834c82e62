"""Where a default-job round spends its time, per torch op (torch.profiler, one thread, one chunk worker).

    .venv/bin/python benchmarks/profile_round.py [--rounds 20] [--set KEY=VALUE ...]

Builds the default job (``Config()``, plus ``--set`` overrides), runs 5 warm-up rounds, then profiles ``--rounds``
rounds and prints torch's table of ops by self CPU time. Prints only (the split is machine-dependent); the split
quoted in docs/performance.md ("What changed") comes from this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from baffle.config import Config  # noqa: E402
from baffle.sim.factory import build  # noqa: E402
from baffle.sim.rounds import RoundRunner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = Config()
    cfg.apply_overrides(["run.threads=1", *args.set])
    fed = build(cfg.validate())
    for c in fed.clients:
        if hasattr(c, "engine"):
            c.engine.workers = 1  # one thread: the profile is of the work, not of the chunk threads
    runner = RoundRunner(fed)
    for r in range(5):
        runner.run_round(r)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for r in range(5, 5 + args.rounds):
            runner.run_round(r)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
