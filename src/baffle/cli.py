"""``baffle`` command line: run, compare, sweep, convert-checkpoint.

Every failure a user can cause ends with one line on stderr, ``baffle: error: ...`` naming the problem (the
key, the file, the directory), and a non-zero exit: 2 for bad input, 70 for an internal error (set
``BAFFLE_DEBUG=1`` to see its traceback), 130 for Ctrl-C. ``baffle run`` checks everything it can before
any work starts: the config's values and sizes (baffle.preflight), the weights file of ``--init``, and the
run directory (baffle.records.rundir: ``--out`` never mixes runs, ``--resume`` never deletes history).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from baffle.config import Config, ConfigError
from baffle.records.checkpoint import CheckpointError

MAX_MESSAGE = 800


class UsageError(Exception):
    """A malformed command line (argparse's complaint, made one line)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message on two lines and exits; we say one line
        raise UsageError(f"{message} (see {self.prog} --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="baffle", description="Backpropagation-free federated learning.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="train a federation in-process (default: lenet_small on 14x14 MNIST, forward-only)")
    run.add_argument("--config", help="TOML config file (sections: run, data, model, estimator, federation, optim, privacy)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. estimator.K=200")
    run.add_argument("--out", help="output directory, new or empty (default: runs/<timestamp>)")
    run.add_argument("--overwrite", action="store_true", help="--out holds an earlier run: delete its files first")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint (with --set, only "
                     "the keys baffle.records.rundir.SAFE_RESUME_CHANGES lists, e.g. run.rounds)")
    run.add_argument("--init", metavar="WEIGHTS", help="start from these weights (sets model.init): safetensors, a baffle "
                     "checkpoint or a torch state_dict")
    run.add_argument("--no-preflight", action="store_true", help="skip the memory/time estimate (the hard bounds stay)")
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

    cv = sub.add_parser("convert-checkpoint", help="rewrite an old pickled checkpoint (BAFFLE01) in the safe format")
    cv.add_argument("old", help="the old checkpoint.pt")
    cv.add_argument("new", nargs="?", help="where to write (default: replace OLD; the run key beside NEW signs it)")
    cv.add_argument("--trust-pickle", action="store_true", help="required: the old format is a pickle (read with torch's "
                    "restricted weights_only unpickler); convert only files you wrote yourself")
    return p


def _run_config(args: argparse.Namespace) -> tuple[Config, Path, bool]:
    """(config, out dir, resuming) after every check that needs no data: bounds, validation, run dir."""
    from baffle import preflight
    from baffle.records import rundir

    if args.resume:
        if args.config or args.init or args.out or args.overwrite:
            raise ConfigError("--resume continues a run exactly as configured; do not combine it with --config/--init/--out/--overwrite")
        prepared = rundir.prepare_resume(args.resume, args.set)
        cfg, out = prepared.cfg, Path(args.resume)
    else:
        cfg = Config.load(args.config) if args.config else Config()
        cfg.apply_overrides(args.set)
        if args.init:
            cfg.model.init = args.init
        out = Path(args.out) if args.out else None
    preflight.check_bounds(cfg)
    if cfg.model.init and Path(cfg.model.init).is_dir():
        raise ConfigError(f"model.init={cfg.model.init!r} is a directory, not a weights file")
    cfg.validate()
    if not args.no_preflight:
        preflight.check_resources(cfg)
    if out is None:
        out = rundir.claim_new("runs", time.strftime("%Y%m%d-%H%M%S"))  # created here: no two runs share it
    elif not args.resume:
        rundir.prepare_fresh(out, overwrite=args.overwrite)
    return cfg, out, bool(args.resume)


def cmd_run(args: argparse.Namespace) -> int:
    cfg, out, resuming = _run_config(args)
    from baffle.sim.loop import Simulation

    try:
        sim = Simulation(cfg, out, progress=not args.no_progress)
    except BaseException:
        if not resuming and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that could not even be built leaves no empty directory behind
        raise
    if resuming:
        if sim.resume_or_start():
            print(f"resuming {out} from round {sim.start_round}", file=sys.stderr)
        else:
            print(f"{out} has no checkpoint yet (killed before the first one): starting from round 0", file=sys.stderr)
    summary = sim.run()
    acc = summary["final_test_acc"]
    print(
        f"{summary['method']}: final test accuracy {100 * acc:.2f}% (best {100 * summary['best_test_acc']:.2f}%) "
        f"after {summary['rounds']} rounds, {summary['wall_s']:.0f} s of training; "
        f"{_bytes(summary['upload_bytes_per_client_per_round'])} bytes uploaded and "
        f"{_bytes(summary['download_bytes_per_client_per_round'])} downloaded per client per round; outputs in {out}/"
    )
    if summary.get("epsilon") is not None:
        print(f"privacy ({cfg.privacy.mode} DP): epsilon {summary['epsilon']:.3g} at delta {cfg.privacy.delta:g}")
    return 0


def _bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def cmd_compare(args: argparse.Namespace) -> int:
    from baffle.records.report import compare

    for run in args.runs:
        if not Path(run).is_dir():
            raise ConfigError(f"compare: {run} is not a run directory")
    print(compare(args.runs, args.out))
    print(f"\nwrote {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from baffle.sweep import main_sweep

    return main_sweep(args.file, args.out, args.set, not args.no_progress, args.force, args.only, args.dry_run)


def cmd_convert(args: argparse.Namespace) -> int:
    from baffle.records.legacy import convert_legacy

    new = convert_legacy(args.old, args.new, trust_pickle=args.trust_pickle)
    print(f"wrote {new} (signed with {Path(new).parent / '.baffle-key'})")
    return 0


def one_line(e: BaseException) -> str:
    """The exception's message on one line, bounded (a long list of names must not flood the terminal)."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {e.strerror or text}"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    commands = {"run": cmd_run, "compare": cmd_compare, "sweep": cmd_sweep, "convert-checkpoint": cmd_convert}
    try:
        args = _parser().parse_args(argv)
        return commands[args.command](args)
    except BrokenPipeError:  # `baffle sweep FILE --dry-run | head`: the reader has what it wanted, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail again
        return 0
    except (UsageError, ConfigError, CheckpointError, OSError, ValueError) as e:
        print(f"baffle: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("baffle: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug, still one line; BAFFLE_DEBUG=1 shows where
        if os.environ.get("BAFFLE_DEBUG"):
            raise
        print(f"baffle: internal error ({type(e).__name__}): {one_line(e)} (BAFFLE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
