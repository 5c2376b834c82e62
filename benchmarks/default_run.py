"""Run the default `baffle run` job (and optionally its backprop twin) and write docs/default-run.md.

    .venv/bin/python benchmarks/default_run.py            # default job only (a few minutes on 2 cores)
    .venv/bin/python benchmarks/default_run.py --with-bp  # plus BP FedSGD with the same config

Every number in docs/default-run.md comes from the summary.json / metrics.jsonl this script produces
(also copied to benchmarks/results/default_run.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    ap.add_argument("--out", default="runs/default-doc")
    args = ap.parse_args()
    out = ROOT / args.out
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "baffle": run(out / "baffle", [])}
    if args.with_bp:
        results["fedsgd"] = run(out / "fedsgd", ["--set", "run.method=fedsgd"])
    write_json(results_dir(__file__) / "default_run.json", results, indent=2)
    text = render(results, (out / "baffle" / "config.toml").read_text(), args.with_bp)
    write_text(ROOT / "docs/default-run.md", text)
    print(text)


def render(results: dict, cfg: str, with_bp: bool) -> str:
    """docs/default-run.md from the results JSON and the run's resolved config.toml."""
    lines = [
        "# The default job: `baffle run`",
        "",
        "Regenerate: `.venv/bin/python benchmarks/default_run.py" + (" --with-bp" if with_bp else "") + "` "
        "(writes benchmarks/results/default_run.json and this page).",
        "",
        f"Machine: {results['machine']}. Wall time is the whole process (data loading and evaluations included).",
        "",
    ]
    rows = []
    for name in ("baffle", "fedsgd"):
        if name not in results:
            continue
        s = results[name]
        m = s["metrics"][-1]
        rows.append([name, percent(s["final_test_acc"], sign=True), percent(s["best_test_acc"], sign=True), s["rounds"],
                     s["upload_bytes_per_client_per_round"], m["client_forward_passes"], s["total_backward_passes"],
                     s["process_wall_s"]])
    lines += table_lines(["method", "final test acc", "best test acc", "rounds", "upload B/client/round",
                          "client forward passes/round", "backward passes", "wall s"], rows)
    lines += ["", "Accuracy along the run (baffle):", ""]
    lines += table_lines(["round", "test acc", "test loss", "train loss", "wall s"],
                         [[m["round"], percent(m["test_acc"], sign=True), f"{m['test_loss']:.4f}", f"{m['train_loss']:.4f}",
                           f"{m['wall_s']:.0f}"] for m in results["baffle"]["metrics"]])
    lines += ["", "The resolved default configuration:", "", "```toml", cfg.strip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
