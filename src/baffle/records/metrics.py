"""One metrics schema for every front-end: ``baffle run``, a Flower simulation and a Flower deployment
write the same ``metrics.jsonl`` rows and ``summary.json`` keys, so ``baffle compare`` and the docs
generators read any of them.

A row is written at each evaluation; a front-end may add keys of its own (the Flower app adds its message
byte counts), never rename the common ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from baffle.config import Config

# Every row has these keys (tests check all front-ends against this list).
ROW_KEYS = (
    "round", "test_acc", "test_loss", "train_loss", "upload_bytes_per_client", "client_forward_passes",
    "total_forward_passes", "total_forward_samples", "total_backward_passes", "total_upload_bytes",
    "download_bytes_per_client", "total_download_bytes", "rejected_uploads", "skipped_rounds", "rejected_by_reason",
    "answered_uploads", "failed_clients", "timed_out_clients", "lr", "wall_s",
)
SUMMARY_KEYS = (
    "method", "model", "dataset", "rounds", "final_test_acc", "best_test_acc", "final_test_loss",
    "total_upload_bytes", "upload_bytes_per_client_per_round", "total_download_bytes",
    "download_bytes_per_client_per_round", "total_forward_passes", "total_backward_passes", "rejected_uploads",
    "skipped_rounds", "rejected_by_reason", "answered_uploads", "epsilon", "wall_s",
)


@dataclass
class Counters:
    """Cumulative costs of a run, checkpointed with it."""

    rounds_done: int = 0
    forward_passes: int = 0  # minibatch forward passes, all clients
    forward_samples: int = 0  # samples pushed through a forward pass, all clients
    backward_passes: int = 0
    upload_bytes: int = 0
    download_bytes: int = 0  # server -> client plans (cost model: methods.download_bytes per sampled client)
    wall_s: float = 0.0
    rejected: int = 0
    skipped_rounds: int = 0
    answered: int = 0  # client uploads received in time (all rounds)
    failed: int = 0  # sampled clients that failed mid-round
    timed_out: int = 0  # sampled clients dropped for exceeding federation.timeout_s
    sim_time_s: float = 0.0  # simulated waiting time of the server (straggler model)
    rejected_by_reason: dict = field(default_factory=dict)  # rejection code -> count

    def add_round(self, result: Any) -> None:
        """Count a finished round's outcome (a ``baffle.server.ingest.RoundResult``)."""
        self.rejected += len(result.rejected)
        self.skipped_rounds += int(result.skipped)
        self.answered += result.answered
        self.failed += result.failed
        self.timed_out += result.timed_out
        for rej in result.rejected:
            self.rejected_by_reason[rej.code] = self.rejected_by_reason.get(rej.code, 0) + 1


def last_round_metrics(last: Any) -> dict:
    """The ``round_*`` keys: what the last round before an evaluation did."""
    if last is None:
        return {}
    reasons: dict[str, int] = {}
    for rej in last.rejected:
        reasons[rej.code] = reasons.get(rej.code, 0) + 1
    return {
        "round_sampled": last.sampled,
        "round_answered": last.answered,
        "round_accepted": last.accepted,
        "round_rejected_by_reason": reasons,
        "round_skipped": last.skipped,
    }


def privacy_metrics(ledger: Any) -> dict:
    """The DP keys of a row (``privacy_mode``, ``epsilon`` (None when unbounded), ``delta``); {} without DP."""
    if ledger is None:
        return {}
    eps = ledger.epsilon()
    return {"privacy_mode": ledger.mode, "epsilon": eps if eps != float("inf") else None, "delta": ledger.delta}


def metrics_row(
    rounds_done: int,
    test: tuple[float, float],
    train_loss: float | None,
    costs: tuple[int, int],
    c: Counters,
    lr: float,
    last: Any = None,
    extra: dict | None = None,
    download: int | None = None,
) -> dict:
    """One evaluation's row. ``costs`` = (upload bytes, forward passes) per client per round of the method;
    ``download`` = its server -> client bytes per sampled client per round (``methods.download_bytes``)."""
    acc, loss = test
    return {
        "round": rounds_done,
        "test_acc": acc,
        "test_loss": loss,
        "train_loss": train_loss,
        "upload_bytes_per_client": costs[0],
        "client_forward_passes": costs[1],
        "total_forward_passes": c.forward_passes,
        "total_forward_samples": c.forward_samples,
        "total_backward_passes": c.backward_passes,
        "total_upload_bytes": c.upload_bytes,
        "download_bytes_per_client": download,
        "total_download_bytes": c.download_bytes,
        "rejected_uploads": c.rejected,
        "skipped_rounds": c.skipped_rounds,
        "rejected_by_reason": dict(sorted(c.rejected_by_reason.items())),
        "answered_uploads": c.answered,
        "failed_clients": c.failed,
        "timed_out_clients": c.timed_out,
        "sim_wait_s": round(c.sim_time_s, 3),
        **last_round_metrics(last),
        **(extra or {}),
        "lr": lr,
        "wall_s": round(c.wall_s, 3),
    }


def make_summary(cfg: Config, history: list[dict], c: Counters) -> dict:
    accs = [h["test_acc"] for h in history]
    return {
        "method": cfg.run.method,
        "model": cfg.model.name,
        "dataset": cfg.data.name,
        "rounds": cfg.run.rounds,
        "final_test_acc": accs[-1] if accs else None,
        "best_test_acc": max(accs) if accs else None,
        "final_test_loss": history[-1]["test_loss"] if history else None,
        "total_upload_bytes": c.upload_bytes,
        "upload_bytes_per_client_per_round": history[-1]["upload_bytes_per_client"] if history else None,
        "total_download_bytes": c.download_bytes,
        "download_bytes_per_client_per_round": history[-1].get("download_bytes_per_client") if history else None,
        "total_forward_passes": c.forward_passes,
        "total_backward_passes": c.backward_passes,
        "rejected_uploads": c.rejected,
        "skipped_rounds": c.skipped_rounds,
        "rejected_by_reason": dict(sorted(c.rejected_by_reason.items())),
        "answered_uploads": c.answered,
        "epsilon": history[-1].get("epsilon") if history else None,
        "wall_s": round(c.wall_s, 2),
    }


def read_metrics(out: Path | None) -> list[dict]:
    if out is None or not (out / "metrics.jsonl").exists():
        return []
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def append_metrics(out: Path | None, row: dict) -> None:
    """Append one row durably: on disk before the checkpoint that covers its round."""
    if out is None:
        return
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(out: Path, keep_through_round: int) -> None:
    """Drop rows written after the checkpoint (they will be redone) and a torn last line."""
    from baffle.records.checkpoint import atomic_write_bytes

    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        return
    keep = []
    for ln in metrics.read_text().splitlines():
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:  # a line cut by a crash mid-append: its round was not checkpointed
            continue
        if isinstance(row, dict) and row.get("round", 0) <= keep_through_round:
            keep.append(ln)
    atomic_write_bytes(metrics, ("\n".join(keep) + "\n").encode() if keep else b"")
