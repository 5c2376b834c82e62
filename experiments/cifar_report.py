"""docs/cifar.md's results section from the runs of experiments/cifar10.toml, cifar10_samples.toml and cifar10_rf.toml,
finished or cut short.

``baffle sweep`` tabulates finished runs only; CIFAR-10 runs on a CPU are often stopped early and resumed
later, so this reads every run directory whose config matches its sweep file (``metrics.jsonl``; a run
without ``summary.json`` is reported as cut short at its last evaluated round, out of its planned rounds).
A run whose directory is not on this machine (runs of hours, made in another checkout) keeps its row from
the previous report (docs/results/cifar10/results.json), with the "where" that report gave for its sweep, so
regenerating the section after one new run never drops the others; a run directory present here always wins.
Columns as in the main table, plus client peak memory from docs/results/cifar_memory.json (the run's batch:
the batched-engine forward-only client for BAFFLE, the BP client for FedSGD/FedAvg; ``experiments/cifar_memory.py``).

    .venv/bin/python experiments/cifar_report.py [--results-root .] [--where "1 CPU thread per run"]

Writes docs/results/cifar10/{results.json, acc_vs_rounds.png, acc_vs_forward_passes.png} and the
``cifar_runs`` section of docs/cifar.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from pathlib import Path

from baffle.records.report import plot_accuracy, read_run
from baffle.records.results import write_json, write_section
from baffle.records.tables import table_lines
from baffle.sweep import Sweep, load_sweep, make_config, run_status

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = tuple(ROOT / "experiments" / f for f in ("cifar10.toml", "cifar10_samples.toml", "cifar10_rf.toml"))
DOC = ROOT / "docs" / "cifar.md"
DOCS_OUT = ROOT / "docs" / "results" / "cifar10"
MEMORY = ROOT / "docs" / "results" / "cifar_memory.json"
BEGIN, END = "<!-- cifar_runs:begin -->", "<!-- cifar_runs:end -->"
GOAL_IID = 0.65  # issue 14: forward-only, 10 IID clients
GOAL_DIR_GAP = 0.03  # Dirichlet(0.5) within 3 points of IID


def client_memory(model: str, batch: int, backprop: bool) -> float | None:
    """Cold step peak MiB of one client step (experiments/cifar_memory.py), or None if not measured."""
    if not MEMORY.exists():
        return None
    kind = "bp" if backprop else "baffle_batched"
    res = json.loads(MEMORY.read_text())
    for r in res["rows"] + res.get("rf_rows", []):
        if r["model"] == model and r["batch"] == batch and r["kind"] == kind:
            return r["step_peak_mib_cold"]
    return None


def previous_report(path: Path) -> tuple[dict[tuple[str, str], dict], dict[str, str]]:
    """Rows of the last report by (sweep, run name), and its "where" per sweep (older reports: one sweep, one string)."""
    if not path.exists():
        return {}, {}
    old = json.loads(path.read_text())
    default_sweep = old.get("sweep", "experiments/cifar10.toml")
    where = old["where"] if isinstance(old.get("where"), dict) else {default_sweep: old.get("where", "")}
    rows = {(r.get("sweep", default_sweep), r["name"]): r for r in old.get("runs", [])}
    return rows, where


def collect(results_root: Path, previous: dict[tuple[str, str], dict] | None = None) -> list[dict]:
    """One row per run of each sweep: from its run directory under ``results_root`` (the sweep's ``out``) when that
    holds at least one evaluation with the sweep's config, else the previous report's row if there is one."""
    previous = previous or {}
    rows = []
    for sweep_file in SWEEPS:
        rel = sweep_file.relative_to(ROOT).as_posix()
        sweep = load_sweep(sweep_file)
        rows += [r | {"sweep": rel} for r in collect_sweep(sweep, results_root / sweep.out)]
        have = {r["name"] for r in rows if r["sweep"] == rel}
        rows += [previous[(rel, spec.name)] | {"sweep": rel, "kept": True, "lr": make_config(spec, []).optim.lr}
                 for spec in sweep.runs if spec.name not in have and (rel, spec.name) in previous]
    return rows


def collect_sweep(sweep: Sweep, results: Path) -> list[dict]:
    """One row per run of the sweep with at least one evaluation under ``results`` and the sweep's config."""
    rows = []
    for spec in sweep.runs:
        cfg = make_config(spec, [])
        run_dir = results / spec.name
        status = run_status(run_dir, cfg)
        if status in ("fresh", "conflict") or not (run_dir / "metrics.jsonl").exists():
            continue
        history, summary = read_run(run_dir)
        if not history:
            continue
        last, n = history[-1], cfg.data.num_clients
        backprop = cfg.run.method in ("fedsgd", "fedavg")
        rows.append({
            "name": spec.name, "method": cfg.run.method, "model": cfg.model.name, "partition": cfg.data.partition,
            "alpha": cfg.data.alpha, "batch": cfg.federation.batch_size, "lr": cfg.optim.lr, "K": cfg.estimator.K,
            "augment": cfg.data.augment, "test_images": cfg.data.test_subset or 10_000,
            "planned_rounds": cfg.run.rounds, "rounds": last["round"], "finished": status == "done",
            "final_test_acc": last["test_acc"], "best_test_acc": max(h["test_acc"] for h in history),
            "forward_passes_per_client": last["total_forward_passes"] / n,
            "samples_per_client": (last.get("total_forward_samples") or 0) / n,
            "upload_bytes_per_client_per_round": last["upload_bytes_per_client"],
            "client_step_peak_mib": client_memory(cfg.model.name, cfg.federation.batch_size, backprop),
            "wall_s": last["wall_s"],
            "history": [{"round": h["round"], "test_acc": h["test_acc"], "client_forward_passes": h["total_forward_passes"] / n,
                         "wall_s": h["wall_s"]} for h in history],
        })
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def recipe(name: str) -> str:
    """A run's recipe: its name without a ``_seedN`` suffix (``iid_rf_lr0.001_seed1`` is seed 1 of ``iid_rf_lr0.001``)."""
    return re.sub(r"_seed\d+$", "", name)


def best_iid_forward_only(rows: list[dict], model: str) -> list[dict]:
    """The seeds of the IID forward-only recipe of ``model`` with the highest mean best accuracy, over every recipe the
    sweeps tried (``screen_*`` runs are screens, not candidates); seed 0's run first."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] == "baffle" and r["partition"] == "iid" and r["model"] == model and not r["name"].startswith("screen_"):
            groups.setdefault(recipe(r["name"]), []).append(r)
    return max(groups.values(), key=lambda g: statistics.fmean(r["best_test_acc"] for r in g), default=[])


def seeds_cell(runs: list[dict]) -> tuple[str, float]:
    """The goal's measured cell over a recipe's finished seeds (mean ± sample std of the final and the best accuracy)
    and the number it is judged on: the mean final accuracy with 2+ finished seeds, else one run's best."""
    done = [r for r in runs if r["finished"]]
    if len(done) < 2:
        return _pct(runs[0]["best_test_acc"]), runs[0]["best_test_acc"]
    final, best = [r["final_test_acc"] for r in done], [r["best_test_acc"] for r in done]
    cell = (f"{_pct(statistics.fmean(final))} ± {100 * statistics.stdev(final):.2f} final, {_pct(statistics.fmean(best))} ± "
            f"{100 * statistics.stdev(best):.2f} best ({len(done)} seeds: {', '.join(_pct(x) for x in final)} final)")
    return cell, statistics.fmean(final)


#: the goal row's label per model: what it trains forward-only
GOAL_MODELS = {"cnn_cifar_small": "every parameter (cnn_cifar_small, augmented)",
               "rf_white": "the classifier over frozen random features (rf_white, no augmentation)"}


def goals(rows: list[dict]) -> list[list[str]]:
    by = {r["name"]: r for r in rows}
    out = []

    def state(r: dict) -> str:
        return f"`{r['name']}`, {r['rounds']:,} of {r['planned_rounds']:,} rounds" + ("" if r["finished"] else " (cut short)")

    for model, what in GOAL_MODELS.items():
        label = f"forward-only, 10 IID clients: >= 65%; trains {what}"
        runs = best_iid_forward_only(rows, model)
        if runs:
            cell, judged = seeds_cell(runs)
            where = "; ".join(state(r) for r in runs)
            out.append([label, cell, where, "yes" if judged >= GOAL_IID else f"**no** (gap {100 * (GOAL_IID - judged):.1f} points)"])
        else:
            out.append([label, "not run", "", "**no**"])
    # each Dirichlet forward-only recipe is judged against the IID runs of ITS recipe: dir0.5_<recipe> vs iid_<recipe>;
    # over their seeds' mean final accuracies when both have 2+ finished seeds, else seed 0 against seed 0
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] == "baffle":
            groups.setdefault(recipe(r["name"]), []).append(r)
    pairs = [(f"iid_{rec.removeprefix('dir0.5_')}", rec) for rec in groups
             if rec.startswith("dir0.5_") and f"iid_{rec.removeprefix('dir0.5_')}" in groups]
    for iid_rec, dir_rec in pairs:
        label = "Dirichlet(0.5) within 3 points of IID (same recipe)"
        iids, dirs = ([r for r in groups[rec] if r["finished"]] for rec in (iid_rec, dir_rec))
        if len(iids) >= 2 and len(dirs) >= 2:
            i, d = (statistics.fmean(r["final_test_acc"] for r in g) for g in (iids, dirs))
            out.append([label, f"{100 * (i - d):+.1f} points (mean final: IID {_pct(i)}, {len(iids)} seeds; Dirichlet "
                        f"{_pct(d)}, {len(dirs)} seeds)", "; ".join(state(r) for r in groups[dir_rec]),
                        "yes" if i - d <= GOAL_DIR_GAP else "**no**"])
            continue
        if iid_rec not in by or dir_rec not in by:
            continue
        iid, dirichlet = by[iid_rec], by[dir_rec]
        if dirichlet["finished"]:
            gap = iid["best_test_acc"] - dirichlet["best_test_acc"]
            out.append([label, f"{100 * gap:+.1f} points", f"{state(dirichlet)} vs `{iid['name']}`",
                        "yes" if gap <= GOAL_DIR_GAP else "**no**"])
        else:  # cut short: compare with IID's best up to the same round, and do not judge the goal
            upto = dirichlet["rounds"]
            iid_then = max(h["test_acc"] for h in iid["history"] if h["round"] <= upto)
            gap = iid_then - dirichlet["best_test_acc"]
            out.append([label, f"{100 * gap:+.1f} points at round {upto:,} (best so far: IID {_pct(iid_then)}, Dirichlet "
                        f"{_pct(dirichlet['best_test_acc'])})", state(dirichlet), "**no** (not judged: cut short)"])
    if not pairs:
        out.append(["Dirichlet(0.5) within 3 points of IID (same recipe)", "not run", "", "**no**"])
    return out


def write(rows: list[dict], where: dict[str, str], doc: Path, docs_out: Path) -> None:
    docs_out.mkdir(parents=True, exist_ok=True)
    write_json(docs_out / "results.json", {"sweeps": [f.relative_to(ROOT).as_posix() for f in SWEEPS], "where": where,
                                           "loadavg_at_report": os.getloadavg()[0], "runs": rows})
    curves = {r["name"]: r["history"] for r in rows}
    if curves:
        plot_accuracy(curves, docs_out / "acc_vs_rounds.png", "round", "round")
        plot_accuracy(curves, docs_out / "acc_vs_forward_passes.png", "client_forward_passes", "forward passes per client", log_x=True)
    head = ["run", "model", "data", "method", "K", "batch", "lr", "rounds (planned)", "test imgs", "final acc", "best acc", "fwd passes / client",
            "samples / client", "upload B / client / round", "client step peak MiB", "wall s"]
    table = []
    for r in rows:
        data = "IID" if r["partition"] == "iid" else f"Dirichlet({r['alpha']:g})"
        rounds = f"{r['rounds']:,} ({r['planned_rounds']:,})" + ("" if r["finished"] else " **cut short**")
        mem = f"{r['client_step_peak_mib']:.1f}" if r["client_step_peak_mib"] is not None else "not measured"
        k = str(r["K"]) if r["method"] == "baffle" else ""
        table.append([f"`{r['name']}`", r["model"], data, r["method"], k, str(r["batch"]), f"{r['lr']:g}", rounds,
                      f"{r.get('test_images', 2000):,}", _pct(r["final_test_acc"]), _pct(r["best_test_acc"]),
                      f"{r['forward_passes_per_client']:,.0f}", f"{r['samples_per_client']:,.0f}",
                      f"{r['upload_bytes_per_client_per_round']:,}", mem, f"{r['wall_s']:,.0f}"])
    where_lines = [f"- `{sweep}`: {text}" for sweep, text in where.items()]
    section = "\n".join([
        BEGIN,
        "## CIFAR-10 from scratch: forward-only vs backprop (10 clients)",
        "",
        "`baffle sweep experiments/cifar10.toml` (baffle's defaults of 2026-12-02: batch 8, Adam lr 0.01, noise v1; "
        "the FedSGD and FedAvg twins) and `baffle sweep experiments/cifar10_samples.toml` (the defaults of 2026-12-04: "
        "Adam lr 0.005, beta2 0.999, noise v2-gauss, at 32 and 128 samples per pass), both resumable (`--only REGEX` "
        "picks runs), then `python experiments/cifar_report.py`. Same model, augmentation, K, sigma, clip and EMA in "
        "both files; `baffle sweep experiments/cifar10_rf.toml` (rf_white: frozen whitened random features, only the "
        "classifier trains, K=1000, batch 128, no augmentation, its FedSGD and FedAvg twins on the same features). All numbers on the **JPEG copy** of CIFAR-10 (../shared/data): "
        "JPEG compression costs accuracy against the original images (a pretrained ResNet-20 scores about 11 points "
        "lower on these JPEGs than on the originals, ../shared/data/README.md), so compare with published CIFAR-10 "
        "numbers only with that caveat. Test accuracy (EMA weights) on a fixed 2,000-image test subset or the whole "
        "10,000-image test set (test imgs), seed 0 unless the run's name ends in `_seedN`; a goal row over several seeds "
        "gives their mean ± sample standard deviation and is judged on the mean final accuracy. "
        "A run marked **cut short** stopped before its planned rounds (learning rate still near its peak on the "
        "cosine schedule) and resumes with the same command. fwd passes / samples per client: client minibatch "
        "forward passes and images through them (a backprop step counts one forward). lr: the server Adam's peak rate. "
        "Client step peak: `experiments/cifar_memory.py` at the run's batch (cold step; BAFFLE = batched engine), "
        "see the memory section. Where the runs ran (wall times depend on it):",
        "",
        *where_lines,
        "",
        *table_lines(["goal (issue 14)", "measured (best acc; seeds: mean ± std)", "run", "met"], goals(rows)),
        "",
        *(table_lines(head, table, ["l", "l", "l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r"]) if table else ["No run has evaluated yet."]),
        "",
        "![accuracy vs rounds](results/cifar10/acc_vs_rounds.png)",
        "![accuracy vs forward passes](results/cifar10/acc_vs_forward_passes.png)",
        "",
        END,
    ])
    write_section(doc, BEGIN, END, section, title="# CIFAR-10\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results-root", default=str(ROOT), help="directory the sweeps' `out` paths are relative to")
    ap.add_argument("--where", default="CPU, 1 thread per run on the shared 2-core development machine",
                    help="where the runs read from run directories ran (kept rows keep their report's text)")
    ap.add_argument("--doc", default=str(DOC))
    ap.add_argument("--docs-out", default=str(DOCS_OUT))
    args = ap.parse_args(argv)
    docs_out = Path(args.docs_out)
    previous, old_where = previous_report(docs_out / "results.json")
    rows = collect(Path(args.results_root), previous)
    where = {sweep: (old_where.get(sweep, "") if all(r.get("kept") for r in rows if r["sweep"] == sweep) else args.where)
             for sweep in dict.fromkeys(r["sweep"] for r in rows)}
    write(rows, where, Path(args.doc), docs_out)
    for r in rows:
        print(f"{r['name']:28s} {r['rounds']:6d}/{r['planned_rounds']:<6d} {'done' if r['finished'] else 'cut short':9s} "
              f"final {_pct(r['final_test_acc'])} best {_pct(r['best_test_acc'])}" + ("  (kept from the last report)" if r.get("kept") else ""))
    print(f"wrote {args.doc} and {docs_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
