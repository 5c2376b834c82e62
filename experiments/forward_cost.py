"""Estimate the run time of each quick sweep: its planned client minibatch forward passes (what
`baffle sweep --dry-run` counts) times the measured median cost of one LeNet forward of a 32-sample batch.

    python experiments/forward_cost.py [--out docs/results/forward_cost.json]

The timing is whatever the machine gives at that moment (load average recorded with it): on a shared machine
it is an upper bound of the idle cost. Backprop steps are counted as one pass (they cost ~3x): BP runs are a
small share of every file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from baffle.models import build_model
from baffle.sweep import load_sweep, make_config, planned_forward_passes

FILES = ["main_table", "k_sweep", "ablations", "beyond_paper", "finetune"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/results/forward_cost.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model("lenet").eval()
    x = torch.randn(32, 1, 28, 28)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        for _ in range(60):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    ms = 1000 * statistics.median(times)
    exp = Path(__file__).resolve().parent
    ckpt = Path("/tmp/_forward_cost_init.pt")
    torch.save(build_model("lenet", num_classes=5).state_dict(), ckpt)  # finetune.toml needs an existing model.init
    files = {}
    for name in FILES:
        extra = [f"model.init={ckpt}"] if name == "finetune" else []
        sweep = load_sweep(exp / f"{name}.toml", out="/tmp/_forward_cost_out", extra=extra)
        fwd = sum(planned_forward_passes(make_config(s, extra)) for s in sweep.runs)
        files[name] = {"runs": len(sweep.runs), "forward_passes": fwd, "est_minutes": round(fwd * ms / 1000 / 60, 1)}
    total = sum(f["forward_passes"] for f in files.values())
    out = {"lenet_forward_ms_batch32_median": round(ms, 3), "threads": args.threads, "loadavg_1min": os.getloadavg()[0],
           "files": files, "total_forward_passes": total, "total_est_minutes": round(total * ms / 1000 / 60, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
