"""``baffle`` command line: run, compare."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from baffle.records.checkpoint import CheckpointError
from baffle.config import Config, ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baffle", description="Backpropagation-free federated learning.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train a federation in-process (default: LeNet on MNIST, forward-only)")
    run.add_argument("--config", help="TOML config file (sections: run, data, model, estimator, federation, optim)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. estimator.K=200")
    run.add_argument("--out", help="output directory (default: runs/<timestamp>)")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    run.add_argument("--init", metavar="CHECKPOINT", help="start from these weights (sets model.init)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    cmp = sub.add_parser("compare", help="overlay several runs' curves in one PNG and print a table")
    cmp.add_argument("runs", nargs="+", help="run directories")
    cmp.add_argument("--out", default="compare.png", help="PNG to write (default: compare.png)")

    sw = sub.add_parser("sweep", help="run a grid of runs from a sweep TOML file, then write results.md and plots")
    sw.add_argument("file", help="sweep file ([base], [grid], [[runs]], out; see baffle.sweep)")
    sw.add_argument("--out", help="output directory (default: the file's `out`)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key in every run")
    sw.add_argument("--only", metavar="REGEX", help="compute only the runs whose name matches")
    sw.add_argument("--force", action="store_true", help="recompute runs whose directory holds a different config")
    sw.add_argument("--dry-run", action="store_true", help="list the runs and their forward passes, run nothing")
    sw.add_argument("--no-progress", action="store_true", help="no per-run progress bar")
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from baffle.sim.loop import Simulation

    if args.resume:
        out = Path(args.resume)
        if not (out / "config.toml").exists():
            raise ConfigError(f"--resume {out}: no config.toml there; is it a baffle run directory?")
        cfg = Config.load(out / "config.toml")
        if args.config or args.set or args.init:
            raise ConfigError("--resume continues a run exactly as configured; do not combine it with --config/--set/--init")
    else:
        cfg = Config.load(args.config) if args.config else Config()
        cfg.apply_overrides(args.set)
        if args.init:
            cfg.model.init = args.init
        out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    cfg.validate()
    sim = Simulation(cfg, out, progress=not args.no_progress)
    if args.resume:
        if sim.resume_or_start():
            print(f"resuming {out} from round {sim.start_round}", file=sys.stderr)
        else:
            print(f"{out} has no checkpoint yet (killed before the first one): starting from round 0", file=sys.stderr)
    summary = sim.run()
    acc = summary["final_test_acc"]
    print(
        f"{summary['method']}: final test accuracy {100 * acc:.2f}% (best {100 * summary['best_test_acc']:.2f}%) "
        f"after {summary['rounds']} rounds, {summary['wall_s']:.0f} s of training; "
        f"{summary['upload_bytes_per_client_per_round']} bytes uploaded per client per round; outputs in {out}/"
    )
    if summary.get("epsilon") is not None:
        print(f"privacy ({cfg.privacy.mode} DP): epsilon {summary['epsilon']:.3g} at delta {cfg.privacy.delta:g}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from baffle.records.report import compare

    print(compare(args.runs, args.out))
    print(f"\nwrote {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from baffle.sweep import main_sweep

    return main_sweep(args.file, args.out, args.set, not args.no_progress, args.force, args.only, args.dry_run)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "compare": cmd_compare, "sweep": cmd_sweep}[args.command](args)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"baffle: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
