"""``baffle sweep FILE.toml``: a grid of ``baffle run``s in one folder, then one table and two plots.

A sweep file::

    out = "results/k_sweep"            # where the runs go (out/<run-name>/ each)
    title = "Accuracy against K"       # optional, heads results.md
    description = "..."                # optional

    [base]                             # config overrides shared by every run (dotted keys or tables)
    data.name = "mnist"
    estimator.engine = "batched"
    sweep.forward_budget = 6000        # pseudo-keys [sweep.*], see below

    [grid]                             # cartesian product: one run per combination
    "estimator.K" = [20, 50, 100]
    estimator.scheme = ["forward", "central"]

    [[runs]]                           # optional explicit variants (each crossed with the grid)
    name = "bp"
    run.method = "fedsgd"

Every path in a sweep file (``out``, ``model.init``, ``data.root``) is relative to the directory ``baffle sweep``
runs from, like the paths of ``baffle run``. Pseudo-keys under ``sweep.`` are consumed here, not by ``Config`` (they may appear in base, grid or runs):

* ``sweep.forward_budget = N``: forward-only runs get ``run.rounds = round(N / forward passes per client per
  round)``, so runs with different K or scheme cost the same client forward passes (the fair comparison).
* ``sweep.evals = E``: ``run.eval_every = ceil(rounds / E)`` (about E evaluations whatever the rounds).

Every run goes through ``baffle.sim.loop.Simulation``, exactly like ``baffle run --out out/<name>``. A run whose
``summary.json`` exists and whose ``config.toml`` equals the config the sweep asks for is not recomputed; one
with the same config but no summary resumes from its checkpoint. A run directory holding a DIFFERENT config
is refused (``--force`` recomputes it), so changing a sweep file never silently mixes old and new results.
At the end: out/results.md, out/results.json, out/acc_vs_rounds.png, out/acc_vs_forward_passes.png.
"""

from __future__ import annotations

import itertools
import math
import re
import shutil
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from baffle.methods import get_method
from baffle.config import Config, ConfigError
from baffle.records.results import write_json, write_text
from baffle.records.rundir import load_run_config
from baffle.records.tables import markdown_table, percent

TOP_LEVEL_KEYS = ("out", "title", "description", "base", "grid", "runs")
SWEEP_KEYS = ("forward_budget", "evals")
RESULT_FILES = ("results.md", "results.json", "acc_vs_rounds.png", "acc_vs_forward_passes.png")


class SweepError(ConfigError):
    """A sweep file that cannot be used; the message names the file and the problem."""


@dataclass
class RunSpec:
    """One run of a sweep: its directory name, every override (base + variant + grid point), what varied."""

    name: str
    overrides: dict[str, Any]
    varied: dict[str, Any]  # the grid keys and explicit-run keys that make this run different
    options: dict[str, Any] = field(default_factory=dict)  # sweep.* pseudo-keys in effect


@dataclass
class Sweep:
    path: Path
    out: Path
    title: str
    description: str
    runs: list[RunSpec]
    varied_keys: list[str]  # table columns, in file order


# ---- parsing ------------------------------------------------------------------------------------


def _flatten(table: dict[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """{"estimator": {"K": 5}} and {"estimator.K": 5} both become {"estimator.K": 5}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, where, dotted + "."))
        else:
            if dotted.count(".") != 1:
                raise SweepError(f"{where}: key {dotted!r} must look like section.key (e.g. estimator.K)")
            flat[dotted] = value
    return flat


def _short(key: str) -> str:
    return key.split(".", 1)[1]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(_fmt(v) for v in value) or "none"
    return str(value)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", name).strip("-.") or "run"


def load_sweep(path: str | Path, out: str | Path | None = None, extra: list[str] | None = None) -> Sweep:
    """Parse and check a sweep file; every run's Config is built and validated before anything runs.

    ``extra`` are ``section.key=value`` overrides applied on top of every run (``baffle sweep --set``).
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise SweepError(f"cannot read sweep file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path} is not valid TOML: {e}") from None
    unknown = sorted(set(doc) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown top-level key(s) {unknown}; valid: {', '.join(TOP_LEVEL_KEYS)}")
    if out is None:
        if not isinstance(doc.get("out"), str) or not doc["out"]:
            raise SweepError(f"{path}: needs a top-level `out = \"DIR\"` (where the runs go) or --out")
        out_dir = Path(doc["out"])
    else:
        out_dir = Path(out)
    for key in ("base", "grid"):
        if key in doc and not isinstance(doc[key], dict):
            raise SweepError(f"{path}: [{key}] must be a table")
    base = _flatten(doc.get("base", {}), f"{path} [base]")
    grid = _flatten(doc.get("grid", {}), f"{path} [grid]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path} [grid]: {key} must be a non-empty list of values, got {values!r}")
    raw_runs = doc.get("runs", [])
    if not isinstance(raw_runs, list) or not all(isinstance(r, dict) for r in raw_runs):
        raise SweepError(f"{path}: runs must be an array of tables ([[runs]])")
    variants: list[tuple[str, dict[str, Any]]] = []
    for i, r in enumerate(raw_runs):
        r = dict(r)
        name = r.pop("name", None)
        if not isinstance(name, str) or not name:
            raise SweepError(f"{path}: [[runs]] entry {i + 1} needs a name = \"...\"")
        variants.append((name, _flatten(r, f"{path} [[runs]] {name!r}")))
    if not variants:
        variants = [("", {})]

    varied_keys: list[str] = []
    for _, v in variants:
        varied_keys += [k for k in v if k not in varied_keys]
    varied_keys += [k for k in grid if k not in varied_keys]

    for item in extra or []:  # a run named `x__seed=0` that ran with seed 1 would carry a false name
        key = item.split("=", 1)[0].strip()
        if key in grid:
            raise SweepError(f"--set {key}: the sweep's [grid] varies {key} (run names carry its values); edit {path} instead")

    runs: list[RunSpec] = []
    keys = list(grid)
    for vname, voverrides in variants:
        for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            point = dict(zip(keys, combo))
            label = "_".join(f"{_short(k)}={_fmt(v)}" for k, v in point.items())
            name = _safe("__".join(p for p in (vname, label) if p))
            overrides = {**base, **voverrides, **point}
            varied = {k: overrides[k] for k in varied_keys if k in overrides}
            runs.append(RunSpec(name, overrides, varied))
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"{path}: several runs would share the directory name(s) {dupes}; give [[runs]] distinct names")
    sweep = Sweep(path, out_dir, str(doc.get("title", path.stem)), str(doc.get("description", "")), runs, varied_keys)
    for spec in runs:
        make_config(spec, extra or [], where=f"{path} run {spec.name!r}")
    return sweep


def make_config(spec: RunSpec, extra: list[str], where: str = "") -> Config:
    """The validated Config of one run (sweep.* pseudo-keys resolved into run.rounds / run.eval_every)."""
    cfg = Config()
    options: dict[str, Any] = {}
    try:
        for key, value in spec.overrides.items():
            section, short = key.split(".", 1)
            if section == "sweep":
                if short not in SWEEP_KEYS:
                    raise SweepError(f"unknown sweep option {key!r}; valid: {', '.join('sweep.' + k for k in SWEEP_KEYS)}")
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise SweepError(f"{key} must be a positive integer, got {value!r}")
                options[short] = value
            else:
                cfg.set(key, value)
        for item in extra:  # --set: sweep.* options too
            key = item.split("=", 1)[0].strip()
            if key.startswith("sweep.") and "=" in item:
                short, value = key[len("sweep."):], item.split("=", 1)[1].strip()
                if short not in SWEEP_KEYS or not value.isdigit() or int(value) < 1:
                    raise SweepError(f"--set {item!r}: sweep options are {', '.join('sweep.' + k for k in SWEEP_KEYS)}, positive integers")
                options[short] = int(value)
            else:
                cfg.apply_overrides([item])
                if key in spec.varied:  # a [[runs]] key overridden for every run: the table shows what ran
                    spec.varied[key] = cfg.get(key)
        method = get_method(cfg.run.method)
        if "forward_budget" in options and not method.backprop:
            per_round = method.per_round_costs(cfg, 0, 0)[1]  # forward passes per client per round
            cfg.run.rounds = max(1, round(options["forward_budget"] / per_round))  # nearest: equal cost within half a round
        if "evals" in options:
            cfg.run.eval_every = max(1, math.ceil(cfg.run.rounds / options["evals"]))
        cfg.validate()
    except ConfigError as e:
        raise SweepError(f"{where}: {e}" if where else str(e)) from None
    spec.options = options
    return cfg


# ---- running ------------------------------------------------------------------------------------


def run_status(run_dir: Path, cfg: Config) -> str:
    """done | resume | fresh | conflict (the directory holds a different config)."""
    cfg_file = run_dir / "config.toml"
    if not cfg_file.exists():
        return "fresh"
    if cfg_file.read_text() != cfg.to_toml():
        try:  # a key added to baffle after the run, absent from its file, takes today's default: not a change
            stored = load_run_config(cfg_file).to_dict()
        except (ConfigError, OSError, ValueError):
            return "conflict"
        if stored != cfg.to_dict():
            return "conflict"
    if (run_dir / "summary.json").exists():
        return "done"
    return "resume" if (run_dir / "checkpoint.pt").exists() else "fresh"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_sweep(
    sweep: Sweep,
    extra: list[str] | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    only: str | None = None,
    simulate: Callable[..., Any] | None = None,
) -> list[dict]:
    """Run (or reuse) every run of the sweep, then write the results files; returns the result rows.

    ``only`` (a regular expression) restricts which runs are computed; the table still lists every finished
    run. A run that raises is recorded with its error and the sweep goes on; ``simulate`` replaces
    ``baffle.sim.loop.Simulation`` (tests count calls with it).
    """
    from baffle.sim.loop import Simulation

    simulate = simulate or Simulation
    extra = extra or []
    sweep.out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in sweep.runs if only is None or re.search(only, s.name)]
    for i, spec in enumerate(todo, 1):
        cfg = make_config(spec, extra, where=f"run {spec.name!r}")
        run_dir = sweep.out / spec.name
        status = run_status(run_dir, cfg)
        head = f"[{i}/{len(todo)}] {spec.name}"
        if status == "done":
            _log(f"{head}: finished earlier, reusing {run_dir}/summary.json")
            continue
        if status == "conflict":
            if not force:
                raise SweepError(
                    f"{run_dir} holds a run with a different config than the sweep asks for; "
                    "move it away or pass --force to recompute it"
                )
            shutil.rmtree(run_dir)
            status = "fresh"
        if status == "fresh" and run_dir.exists():  # leftovers of a run that died before its first checkpoint
            shutil.rmtree(run_dir)
        _log(f"{head}: {'resuming' if status == 'resume' else 'running'} ({cfg.run.method}, {cfg.run.rounds} rounds)")
        try:
            sim = simulate(cfg, run_dir, progress=progress)
            if status == "resume":
                sim.resume()
            sim.run()
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one broken run must not cost the rest of a long sweep
            _log(f"{head}: FAILED: {type(e).__name__}: {e}")
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
    rows = collect(sweep, extra)
    write_results(sweep, rows)
    failed = [r["name"] for r in rows if r.get("error")]
    if failed:
        _log(f"{len(failed)} run(s) failed: {', '.join(failed)} (see <run>/error.txt)")
    return rows


# ---- results ------------------------------------------------------------------------------------


def collect(sweep: Sweep, extra: list[str] | None = None) -> list[dict]:
    """One row per run of the sweep that has outputs matching its current config."""
    from baffle.records.report import read_run

    rows = []
    for spec in sweep.runs:
        cfg = make_config(spec, extra or [])
        run_dir = sweep.out / spec.name
        row: dict[str, Any] = {"name": spec.name, "dir": str(run_dir), "varied": spec.varied}
        if (run_dir / "error.txt").exists() and not (run_dir / "summary.json").exists():
            row["error"] = (run_dir / "error.txt").read_text().strip().splitlines()[-1]
            rows.append(row)
            continue
        if run_status(run_dir, cfg) != "done":
            continue
        history, summary = read_run(run_dir)
        row.update(summary=summary, history=[
            {"round": h["round"], "test_acc": h["test_acc"], "total_forward_passes": h["total_forward_passes"],
             "total_forward_samples": h.get("total_forward_samples"), "wall_s": h["wall_s"]}
            for h in history
        ])
        row["client_forward_passes_per_round"] = history[-1]["client_forward_passes"] if history else None
        rows.append(row)
    return rows


def results_table(rows: list[dict], varied_keys: list[str]) -> str:
    """The Markdown table of results.md."""
    varied_keys = [k for k in varied_keys if k not in ("run.method", "run.rounds")]  # fixed columns already
    cols = ["run"] + [_short(k) for k in varied_keys] + [
        "method", "rounds", "final acc %", "best acc %", "fwd/client/round", "total fwd", "fwd samples", "upload B/client/round",
        "download B/client/round", "wall s",
    ]
    table = []
    for r in rows:
        vals = [r["name"]] + [_fmt(r["varied"].get(k, "")).replace("*", "\\*") for k in varied_keys]  # globs: not emphasis
        if r.get("error"):
            vals += ["FAILED: " + r["error"].replace("|", "/")]  # the writer pads the rest of the row
        else:
            s = r["summary"]
            vals += [
                s["method"],
                s["rounds"],
                percent(s["final_test_acc"]),
                percent(s["best_test_acc"]),
                r["client_forward_passes_per_round"],
                s["total_forward_passes"],
                _samples(r["history"]),
                s["upload_bytes_per_client_per_round"],
                s.get("download_bytes_per_client_per_round") or "n/a",  # not recorded before 2026-12-04
                f"{s['wall_s']:.0f}",
            ]
        table.append(vals)
    return markdown_table(cols, table)


def _samples(history: list[dict]) -> str:
    """Samples pushed through forward passes by all clients, in millions: passes alone hide the batch size."""
    n = history[-1].get("total_forward_samples") if history else None
    return "n/a" if n is None else f"{n / 1e6:.2f}M"


def write_results(sweep: Sweep, rows: list[dict]) -> None:
    from baffle.records.report import plot_accuracy

    out = sweep.out
    text = [f"# {sweep.title}", ""]
    if sweep.description:
        text += [sweep.description.strip(), ""]
    done = [r for r in rows if not r.get("error")]
    text += [
        f"{len(done)} of {len(sweep.runs)} runs finished; generated by `baffle sweep {sweep.path}`.",
        "",
        results_table(rows, sweep.varied_keys),
        "",
        "![accuracy vs rounds](acc_vs_rounds.png)",
        "![accuracy vs client forward passes](acc_vs_forward_passes.png)",
        "",
    ]
    write_text(out / "results.md", "\n".join(text))
    write_json(out / "results.json", {"title": sweep.title, "description": sweep.description.strip(), "varied_keys": sweep.varied_keys, "runs": rows})
    curves = {r["name"]: r["history"] for r in done if r["history"]}
    plot_accuracy(curves, out / "acc_vs_rounds.png", "round", "round")
    plot_accuracy(curves, out / "acc_vs_forward_passes.png", "total_forward_passes", "client minibatch forward passes (all clients)", log_x=True)


def describe(sweep: Sweep, extra: list[str] | None = None) -> str:
    """What ``--dry-run`` prints: each run, its rounds and its total client forward passes."""
    lines = [f"{len(sweep.runs)} runs into {sweep.out}/"]
    total = 0
    for spec in sweep.runs:
        cfg = make_config(spec, extra or [])
        fwd = planned_forward_passes(cfg)
        total += fwd
        lines.append(f"  {spec.name}: {cfg.run.method}, {cfg.run.rounds} rounds, {fwd} client forward passes [{run_status(sweep.out / spec.name, cfg)}]")
    lines.append(f"total client minibatch forward passes: {total}")
    return "\n".join(lines)


def planned_forward_passes(cfg: Config) -> int:
    """Client minibatch forward passes a run will cost (all clients, all rounds; backprop counted as one)."""
    from baffle.methods import per_round_costs

    n = cfg.data.num_clients
    c = cfg.federation.clients_per_round
    m = min(n, int(c) if c > 1 else max(1, int(round(c * n))))
    _, per_client = per_round_costs(cfg, 0, 0)
    return cfg.run.rounds * m * per_client


def main_sweep(path: str, out: str | None, extra: list[str], progress: bool, force: bool, only: str | None, dry_run: bool) -> int:
    """Entry point of ``baffle sweep``."""
    t0 = time.perf_counter()
    sweep = load_sweep(path, out, extra)
    if dry_run:
        print(describe(sweep, extra))
        return 0
    rows = run_sweep(sweep, extra, progress=progress, force=force, only=only)
    print(results_table(rows, sweep.varied_keys))
    print(f"\nwrote {', '.join(str(sweep.out / f) for f in RESULT_FILES)} ({time.perf_counter() - t0:.0f} s)")
    return 1 if any(r.get("error") for r in rows) else 0
