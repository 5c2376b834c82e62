"""Which compact CNN for forward-only CIFAR-10: accuracy vs parameters vs forward cost, measured with backprop.

The zeroth-order estimator's error grows like ``sqrt(n / K)`` with the parameter count n, and a forward-only
client repeats its forward K + 1 times per round, so a model for forward-only training should reach as much
accuracy as it can per parameter and per forward FLOP. This script measures that trade with ordinary backprop
(the ceiling forward-only training chases), the way experiments/bp_capacity.py does for MNIST: every candidate
(``baffle.models_cifar.CifarCNN`` at a few widths, kernel sizes and input resolutions, plus the paper's
WRN-10-2 for reference) is trained centrally with Adam (lr 3e-3, batch 64, no augmentation, the same batches
for every candidate of a resolution) on real CIFAR-10 (the JPEG copy) and scored on a fixed 2,000-image test
subset. Reported: parameters, forward FLOPs per image (``models.count_flops``), ms per forward of a batch of
``--batch`` images (1 thread, ``torch.inference_mode``, best of ``--reps``), accuracy along the way.

    nice -n 10 .venv/bin/python experiments/cifar_capacity.py [--root ../shared/data/cifar10-jpeg.tar.gz]
        [--steps 1000] [--train-wrn] [--out docs/results/cifar_capacity.json]

Writes the JSON, docs/results/cifar_capacity.md (the table) and the table's section of docs/cifar.md.
``--timing-only`` re-times the forwards of a finished run (keeping its accuracies), for when the shared machine
is quieter. WRN-10-2 is timed but not trained unless ``--train-wrn`` (its backprop step costs ~20x a compact CNN's here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baffle.data.dataset import Dataset
from baffle.data.registry import load_dataset
from baffle.models import build_model, count_flops, num_parameters
from baffle.models_cifar import CNN_CIFAR_SMALL, CifarCNN
from baffle.records.results import write_json, write_section, write_text
from baffle.records.tables import table_lines

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cifar.md"
BEGIN, END = "<!-- cifar_capacity:begin -->", "<!-- cifar_capacity:end -->"
TEST_SUBSET = 2000


@dataclass(frozen=True)
class Candidate:
    """One model shape: ``channels`` per conv stage (empty = WRN-10-2), kernel size, input resolution."""

    image_size: int
    channels: tuple[int, ...]
    kernel_size: int = 3

    @property
    def label(self) -> str:
        if not self.channels:
            return f"wrn10_2@{self.image_size}"
        return f"cnn k{self.kernel_size} {'-'.join(map(str, self.channels))}@{self.image_size}"

    def build(self) -> torch.nn.Module:
        torch.manual_seed(0)
        if not self.channels:
            return build_model("wrn10_2", in_channels=3, image_size=self.image_size)
        return CifarCNN(3, 10, image_size=self.image_size, channels=self.channels, kernel_size=self.kernel_size)


CANDIDATES: tuple[Candidate, ...] = (
    Candidate(16, (8, 16), 5),  # lenet_small's shape, colour, 16x16
    Candidate(16, (16, 32, 32)),
    Candidate(32, (8, 16), 5),  # lenet_small's shape, colour, 32x32
    Candidate(32, (8, 16, 32)),
    Candidate(32, (16, 32, 32)),
    Candidate(32, (16, 32, 64)),
    Candidate(32, (32, 64, 64)),
    Candidate(32, ()),  # the paper's WRN-10-2
)


MAX_LOAD = 2.5  # the project's rule: no published timing measured while the 1-minute load average is above this


def forward_ms(model: torch.nn.Module, batch: int, image_size: int, reps: int) -> dict:
    """Wall ms of one forward of ``batch`` images (after one warm-up), as a forward-only client runs it: the best
    and the median of ``reps``, and the 1-minute load average (the machine is shared: the best run is the least
    disturbed one, the median shows the disturbance). Not timed (None) while the load average is above MAX_LOAD."""
    load = os.getloadavg()[0]
    if load > MAX_LOAD:
        return {"forward_ms": None, "forward_ms_median": None, "timing_load": load}
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    return {"forward_ms": 1e3 * min(times), "forward_ms_median": 1e3 * statistics.median(times), "timing_load": os.getloadavg()[0]}


def accuracy(model: torch.nn.Module, test: Dataset, batch: int = 500) -> float:
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(test.x[i:i + batch]).argmax(1) == test.y[i:i + batch]).sum()) for i in range(0, len(test), batch))
    model.train()
    return correct / len(test)


def train(model: torch.nn.Module, data: Dataset, test: Dataset, steps: int, every: int, lr: float) -> list[dict]:
    """Adam, batch 64, the same seeded batches for every model of a resolution; test accuracy every ``every`` steps."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(0)
    curve = []
    model.train()
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.choice(len(data), 64, replace=False))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
        opt.step()
        if step % every == 0 or step == steps:
            curve.append({"step": step, "test_acc": accuracy(model, test)})
    return curve


def load(root: str, size: int, train_subset: int) -> tuple[Dataset, Dataset]:
    kw = {"root": root, "image_size": None if size == 32 else size}
    train, test = load_dataset("cifar10_jpeg", split="train", **kw), load_dataset("cifar10_jpeg", split="test", **kw)
    rng = np.random.default_rng(0)
    test = test.subset(np.sort(rng.choice(len(test), TEST_SUBSET, replace=False)))
    if train_subset and train_subset < len(train):
        train = train.subset(np.sort(rng.choice(len(train), train_subset, replace=False)))
    return train, test


def write_doc(res: dict) -> str:
    """The Markdown table (docs/results/cifar_capacity.md and docs/cifar.md's section) from the JSON."""
    wrn = next((r for r in res["rows"] if r["model"].startswith("wrn10_2")), None)
    steps = res["steps"]
    loads = [r["timing_load"] for r in res["rows"] if r["forward_ms"]]
    timed = (f"1-minute load average between {min(loads):.1f} and {max(loads):.1f} when the rows were timed" if loads
             else "no row timed yet")
    head = ["model", "input", "params", "MFLOP / image", "WRN-10-2 FLOPs / FLOPs", f"ms / forward (B={res['batch']})"]
    head += [f"acc @ {s}" for s in res["eval_steps"]]
    rows = []
    for r in res["rows"]:
        accs = {c["step"]: c["test_acc"] for c in r["curve"]}
        cells = [("**" + r["model"] + "**") if r.get("chosen") else r["model"], f"{r['image_size']}x{r['image_size']}",
                 f"{r['params']:,}", f"{r['flops'] / 1e6:.2f}", f"{wrn['flops'] / r['flops']:.0f}x" if wrn else "",
                 f"{r['forward_ms']:.2f}" if r["forward_ms"] else f"not timed (load {r['timing_load']:.1f})"]
        cells += [f"{100 * accs[s]:.1f}%" if s in accs else "not trained" for s in res["eval_steps"]]
        rows.append(cells)
    lines = [
        BEGIN,
        "## Compact CNN for forward-only CIFAR-10: backprop capacity check",
        "",
        f"`experiments/cifar_capacity.py` (steps={steps}): each candidate trained centrally with backprop (Adam lr "
        f"{res['lr']}, batch 64, no augmentation, {res['train_samples']:,} training images, the same batches for every "
        f"model of a resolution) on the JPEG copy of CIFAR-10; test accuracy on a fixed {TEST_SUBSET:,}-image test subset. "
        "`cnn kK a-b-c@S` = `baffle.models_cifar.CifarCNN` with K x K convolutions, stage widths a-b-c (each stage "
        "conv -> GroupNorm -> Hardswish -> 2x2 max-pool), flatten -> linear, on SxS inputs (`data.image_size`). "
        f"ms / forward: one forward of {res['batch']} images, 1 thread, inference mode, best of {res['reps']} "
        f"({timed}; a row is not timed while the load is above {MAX_LOAD} on this shared 2-core machine: rerun with "
        "`--timing-only` when it is quieter). "
        f"Training wall time of the script: {res['wall_s']:.0f} s. "
        "**bold** = the shape `cnn_cifar_small` builds.",
        "",
        *table_lines(head, rows, ["l", "l"] + ["r"] * (len(head) - 2)),
        "",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="../shared/data/cifar10-jpeg.tar.gz", help="CIFAR-10 in ImageFolder layout")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--train-subset", type=int, default=0, help="train on a seeded subset of this many images (0 = all)")
    ap.add_argument("--batch", type=int, default=32, help="batch of the forward timing")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    ap.add_argument("--train-wrn", action="store_true", help="also train WRN-10-2 (slow on a CPU)")
    ap.add_argument("--timing-only", action="store_true", help="re-time the forwards of the rows in --out, keep the rest")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "cifar_capacity.json"))
    ap.add_argument("--doc", default=str(DOC), help="page whose cifar_capacity section is rewritten")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.timing_only:  # re-time the forwards of a finished run (e.g. when the machine is quieter); accuracy kept
        res = json.loads(out.read_text())
        for row in res["rows"]:
            cand = Candidate(row["image_size"], tuple(row["channels"]), row["kernel_size"])
            row.update(forward_ms(cand.build(), res["batch"], cand.image_size, args.reps))
            print(f"{cand.label:24s} {row['forward_ms']} ms (median {row['forward_ms_median']}, load {row['timing_load']:.1f})")
        res["reps"] = args.reps
        return finish(res, out, args.doc)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    todo = [c for c in CANDIDATES if not args.only or c.label in args.only.split(",")]
    rows, data = [], {}
    for cand in todo:
        if cand.image_size not in data:
            data = {cand.image_size: load(args.root, cand.image_size, args.train_subset)}  # one resolution in memory
        train_set, test = data[cand.image_size]
        model = cand.build()
        row = {"model": cand.label, **asdict(cand), "params": num_parameters(model),
               "flops": count_flops(model, (3, cand.image_size, cand.image_size)),
               **forward_ms(model, args.batch, cand.image_size, args.reps), "curve": []}
        t = time.perf_counter()
        if cand.channels or args.train_wrn:
            row["curve"] = train(model, train_set, test, args.steps, args.every, args.lr)
        row["train_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        accs = "  ".join(f"{c['step']}: {100 * c['test_acc']:.1f}%" for c in row["curve"])
        print(f"{cand.label:24s} {row['params']:7d} params {row['flops'] / 1e6:7.2f} MFLOP {row['forward_ms']} ms  "
              f"{accs}  ({row['train_s']} s)", flush=True)
    eval_steps = sorted({c["step"] for r in rows for c in r["curve"]})
    res = {"optimizer": f"adam lr {args.lr} batch 64, single process (not federated), no augmentation",
           "dataset": "cifar10_jpeg", "root": args.root, "steps": args.steps, "eval_steps": eval_steps, "lr": args.lr,
           "train_samples": len(next(iter(data.values()))[0]), "test_subset": TEST_SUBSET, "batch": args.batch,
           "reps": args.reps, "threads": 1, "loadavg_start": load0, "loadavg_end": os.getloadavg()[0],
           "wall_s": round(time.perf_counter() - t0, 1), "rows": rows}
    return finish(res, out, args.doc)


def finish(res: dict, out: Path, doc: str | Path) -> int:
    """Write the JSON, the table alone (next to it, .md) and the table's section of ``doc``."""
    for row in res["rows"]:  # the shape cnn_cifar_small builds today, at the resolution the CIFAR configs use
        row["chosen"] = (row["image_size"], tuple(row["channels"]), row["kernel_size"]) == (
            32, tuple(CNN_CIFAR_SMALL["channels"]), CNN_CIFAR_SMALL["kernel_size"])
    write_json(out, res)
    section = write_doc(res)
    write_text(out.with_suffix(".md"), section.split("\n", 1)[1].rsplit("\n", 1)[0] + "\n")
    write_section(doc, BEGIN, END, section, title="# CIFAR-10\n")
    print(f"wrote {out}, {out.with_suffix('.md')} and {doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
