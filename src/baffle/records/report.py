"""Run outputs a person reads: summary.json, curves.png, and ``baffle compare``'s overlay and table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from baffle.records.checkpoint import atomic_write_bytes


def write_summary(out: Path, summary: dict) -> None:
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_curves(out: Path, history: list[dict], title: str = "") -> None:
    """Accuracy and losses against rounds."""
    if not history:
        return
    plt = _plt()
    rounds = [h["round"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(rounds, [100 * h["test_acc"] for h in history], marker=".")
    ax1.set_xlabel("round")
    ax1.set_ylabel("test accuracy (%)")
    ax1.grid(alpha=0.3)
    ax2.plot(rounds, [h["test_loss"] for h in history], label="test loss")
    if all(h.get("train_loss") is not None for h in history):  # a Flower server holds no training data
        ax2.plot(rounds, [h["train_loss"] for h in history], label="train loss")
    ax2.set_xlabel("round")
    ax2.set_ylabel("cross-entropy")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl: is it a baffle run directory?")
    history = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return history, summary


def compare(run_dirs: Sequence[str | Path], out_png: str | Path) -> str:
    """Overlay several runs (accuracy vs rounds and vs client forward passes); return a Markdown table."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = ["| run | method | rounds | final acc | best acc | upload B/client/round | download B/client/round | fwd passes | wall s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for d in map(Path, run_dirs):
        history, summary = read_run(d)
        if not history:
            continue
        label = d.name
        ax1.plot([h["round"] for h in history], [100 * h["test_acc"] for h in history], label=label)
        ax2.plot([max(h["total_forward_passes"], 1) for h in history], [100 * h["test_acc"] for h in history], label=label)
        last = history[-1]
        best = max(h["test_acc"] for h in history)
        rows.append(
            f"| {label} | {summary.get('method', '?')} | {last['round']} | {100 * last['test_acc']:.2f} | {100 * best:.2f} | "
            f"{last['upload_bytes_per_client']} | {last.get('download_bytes_per_client') or 'n/a'} | "
            f"{last['total_forward_passes']} | {last['wall_s']:.1f} |"
        )
    ax1.set_xlabel("round")
    ax2.set_xlabel("client minibatch forward passes (all clients)")
    ax2.set_xscale("log")
    for ax in (ax1, ax2):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return "\n".join(rows)


def plot_accuracy(
    curves: dict[str, list[dict]], out_png: str | Path, x_key: str, xlabel: str, log_x: bool = False
) -> None:
    """One line per run: test accuracy against ``x_key`` of its metrics rows (``baffle sweep``'s plots)."""
    plt = _plt()
    many = len(curves) > 8  # beyond the default colour cycle: 20 colours, solid then dashed, legend outside
    fig, ax = plt.subplots(figsize=(10, 5) if many else (7, 4.5))
    colors = plt.get_cmap("tab20").colors
    for i, (label, history) in enumerate(curves.items()):
        xs = [max(h[x_key], 1) if log_x else h[x_key] for h in history]
        style = {"color": colors[i % 20], "linestyle": "-" if i < 20 else "--"} if many else {}
        ax.plot(xs, [100 * h["test_acc"] for h in history], marker=".", label=label, **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    elif curves:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
