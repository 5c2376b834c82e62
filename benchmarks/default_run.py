"""Run the default `baffle run` job (and optionally its backprop twin) and write docs/default-run.md.

    .venv/bin/python benchmarks/default_run.py            # default job only (a few minutes on 2 cores)
    .venv/bin/python benchmarks/default_run.py --with-bp  # plus BP FedSGD with the same config
    .venv/bin/python benchmarks/default_run.py --with-bp --seeds 3  # plus run.seed=1,2 of each: mean and spread

Every number in docs/default-run.md comes from the summary.json / metrics.jsonl this script produces
(also copied to benchmarks/results/default_run.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from baffle.records.results import results_dir, write_json, write_text
from baffle.records.tables import percent, table_lines

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, extra: list[str]) -> dict:
    cmd = [str(ROOT / ".venv/bin/baffle"), "run", "--out", str(out), "--overwrite", "--no-progress", *extra]  # regenerates its own run
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    elapsed = time.time() - t0
    summary = json.loads((out / "summary.json").read_text())
    summary["process_wall_s"] = round(elapsed, 1)
    summary["metrics"] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--with-bp", action="store_true")
    ap.add_argument("--seeds", type=int, default=1, help="run.seed 0..N-1; seed 0 is exactly `baffle run`")
    ap.add_argument("--out", default="runs/default-doc")
    args = ap.parse_args()
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    out = ROOT / args.out
    load_start = os.getloadavg()[0]
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "baffle": run(out / "baffle", [])}
    if args.with_bp:
        results["fedsgd"] = run(out / "fedsgd", ["--set", "run.method=fedsgd"])
    if args.seeds > 1:  # the headline figure over seeds: seed 0 above, then the others, alternating methods
        results["seeds"] = {name: [seed_row(0, results[name])] for name in ("baffle", "fedsgd") if name in results}
        for seed in range(1, args.seeds):
            for name, extra in (("baffle", []), ("fedsgd", ["--set", "run.method=fedsgd"])):
                if name in results["seeds"]:
                    s = run(out / f"{name}_seed{seed}", [*extra, "--set", f"run.seed={seed}"])
                    results["seeds"][name].append(seed_row(seed, s))
    results["load_avg"] = [round(load_start, 1), round(os.getloadavg()[0], 1)]  # wall times are only as good as this
    write_json(results_dir(__file__) / "default_run.json", results, indent=2)
    text = render(results, (out / "baffle" / "config.toml").read_text(), args.with_bp)
    write_text(ROOT / "docs/default-run.md", text)
    print(text)


def seed_row(seed: int, summary: dict) -> dict:
    return {"seed": seed, "final_test_acc": summary["final_test_acc"], "best_test_acc": summary["best_test_acc"],
            "process_wall_s": summary["process_wall_s"]}


def mean_std(values: list[float]) -> str:
    """Mean +- sample standard deviation, in percent (the spread over seeds, not an error bar of the mean)."""
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.2f}% ± {100 * sd:.2f}"


def render(results: dict, cfg: str, with_bp: bool) -> str:
    """docs/default-run.md from the results JSON and the run's resolved config.toml."""
    lines = [
        "# The default job: `baffle run`",
        "",
        "Regenerate: `.venv/bin/python benchmarks/default_run.py" + (" --with-bp" if with_bp else "")
        + (f" --seeds {len(next(iter(results['seeds'].values())))}" if "seeds" in results else "") + "` "
        "(writes benchmarks/results/default_run.json and this page).",
        "",
        f"Machine: {results['machine']}. Wall time is the whole process (data loading and evaluations included); "
        + (f"1-minute load average at the start / end: {results['load_avg'][0]} / {results['load_avg'][1]} "
           "(on 2 cores, wall times above a load of ~1 include waiting for a core)." if "load_avg" in results
           else "the machine's load was not recorded for this run, so wall times may include waiting for a core."),
        "",
    ]
    rows = []
    for name in ("baffle", "fedsgd"):
        if name not in results:
            continue
        s = results[name]
        m = s["metrics"][-1]
        rows.append([name, percent(s["final_test_acc"], sign=True), percent(s["best_test_acc"], sign=True), s["rounds"],
                     s["upload_bytes_per_client_per_round"], s.get("download_bytes_per_client_per_round") or "n/a",
                     m["client_forward_passes"], f"{m['total_forward_samples'] / 1e6:.2f} M" if m.get("total_forward_samples") else "n/a",
                     s["total_backward_passes"], s["process_wall_s"]])
    lines += table_lines(["method", "final test acc", "best test acc", "rounds", "upload B/client/round",
                          "download B/client/round", "client forward passes/round", "forward samples (all clients)",
                          "backward passes", "wall s"], rows)
    if "seeds" in results:
        lines += ["", "Over seeds (`run.seed` 0, 1, ...; seed 0 is the row above; mean ± standard deviation over seeds):", ""]
        lines += table_lines(["method", "seeds", "final test acc", "best test acc", "per seed (final)", "mean wall s"],
                             [[name, len(rs), mean_std([r["final_test_acc"] for r in rs]),
                               mean_std([r["best_test_acc"] for r in rs]),
                               ", ".join(percent(r["final_test_acc"], sign=True) for r in rs),
                               f"{statistics.mean(r['process_wall_s'] for r in rs):.0f}"]
                              for name, rs in results["seeds"].items()])
    lines += ["", "Accuracy along the run (baffle):", ""]
    lines += table_lines(["round", "test acc", "test loss", "train loss", "wall s"],
                         [[m["round"], percent(m["test_acc"], sign=True), f"{m['test_loss']:.4f}", f"{m['train_loss']:.4f}",
                           f"{m['wall_s']:.0f}"] for m in results["baffle"]["metrics"]])
    lines += ["", "The resolved default configuration:", "", "```toml", cfg.strip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
