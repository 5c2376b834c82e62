"""The round ingest: validate -> quorum -> aggregate -> step. The ONE path by which scalar uploads change
the model, whoever collected them (the simulator, the Flower app in plain or SecAgg+ mode, the benchmarks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from baffle.protocol.messages import Upload
from baffle.server.strategy import ServerStrategy
from baffle.server.validation import Rejection

log = logging.getLogger("baffle")


@dataclass
class RoundResult:
    """What one server step did, for metrics."""

    round: int
    accepted: int
    rejected: list[Rejection] = field(default_factory=list)
    skipped: bool = False
    grad_norm: float = 0.0
    sampled: int = 0
    answered: int = 0  # sampled clients that uploaded in time (the rest failed or timed out)
    failed: int = 0
    timed_out: int = 0
    round_time_s: float = 0.0  # simulated time the server waited (straggler model)
    aggregate: np.ndarray | None = None  # the K-vector the step used (None: skipped); replay transports resend it
    valid: list[Upload] = field(default_factory=list, repr=False)  # the uploads that passed validation


def _quorum(strategy: ServerStrategy, result: RoundResult, valid: int, what: str) -> bool:
    need = strategy.cfg.federation.min_clients
    if valid < need:
        log.warning("round %d skipped: %d %s < min_clients=%d", result.round, valid, what, need)
        result.skipped = True
        return False
    return True


def ingest_uploads(
    strategy: ServerStrategy,
    uploads: Sequence[object],
    round_idx: int,
    expected: set[int] | None,
    *,
    length: int | None = None,
    step: Callable[[list[Upload]], float] | None = None,
) -> RoundResult:
    """Plain mode: every client's scalars are visible. Validate, check the quorum, then step: by default
    aggregate the K-vectors (robust aggregators and central DP act here), rebuild g from the round's seeds
    and step. A method whose uploads are longer (``length``, e.g. S x K for local steps) brings its own
    ``step`` over the valid uploads; validation and the quorum stay this one."""
    ok, rejected = strategy.validate(uploads, round_idx, expected, length=length)  # type: ignore[arg-type]
    result = RoundResult(round_idx, len(ok), rejected, valid=ok)
    if _quorum(strategy, result, len(ok), "valid uploads"):
        if step is not None:
            result.grad_norm = step(ok)
        else:
            result.aggregate = strategy.aggregate_diffs(ok, round_idx)
            result.grad_norm = strategy.apply_loss_diffs(round_idx, result.aggregate)
    return result


def ingest_aggregate(
    strategy: ServerStrategy, mean: np.ndarray | None, contributors: int, num_examples: int, round_idx: int
) -> RoundResult:
    """Secure-aggregation mode: only the weighted mean of the contributors' K-vectors exists on the server.

    It still passes the single validation point, as one pseudo-upload (shape, dtype, finiteness, magnitude);
    per-client checks are impossible by design.
    """
    result = RoundResult(round_idx, contributors)
    if not _quorum(strategy, result, 0 if mean is None else contributors, "contributors"):
        return result
    per_client = max(1, round(num_examples / max(1, contributors)))  # a per-client count, as validation expects
    agg = Upload(client_id=0, round=round_idx, loss_diffs=np.asarray(mean, dtype=np.float32), num_samples=per_client)
    ok, rejected = strategy.validate([agg], round_idx, None)
    if not ok:
        result.rejected = rejected
        result.skipped = True
        return result
    result.aggregate = ok[0].loss_diffs
    result.grad_norm = strategy.apply_loss_diffs(round_idx, result.aggregate)
    return result
