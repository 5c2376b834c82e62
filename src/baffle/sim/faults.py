"""Clients that fail or straggle mid-round, simulated in-process.

Which sampled clients answer is decided BEFORE any upload is computed, so the plain per-client loop and any
fused multi-client path see the same answering set, and dropped clients spend no compute and do not advance
their data samplers (as if they died before finishing). Every draw is a pure function of
(run seed, round, client id): a resumed run drops exactly the same clients.

* failure: each sampled client fails with probability ``federation.dropout_rate``;
* straggling: each surviving client's response time is exponential with mean ``federation.straggler_delay_s``
  (simulated, never slept); with ``federation.timeout_s > 0`` the server stops waiting at the timeout and
  the late clients are dropped. The round's simulated duration is recorded for metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from baffle.protocol import streams


@dataclass
class Availability:
    """Who answered one round, and why the others did not."""

    answered: list[int]
    failed: list[int] = field(default_factory=list)
    timed_out: list[int] = field(default_factory=list)
    round_time_s: float = 0.0  # simulated wall time the server waited

    @property
    def dropped(self) -> int:
        return len(self.failed) + len(self.timed_out)


def client_draws(seed: int, round_idx: int, client_id: int) -> tuple[float, float]:
    """(uniform in [0, 1) for failure, standard exponential for delay) of one client in one round."""
    rng = streams.rng(seed, streams.FAULTS, round_idx, client_id)
    return float(rng.random()), float(rng.standard_exponential())


def availability(
    sampled: Sequence[int], round_idx: int, seed: int, dropout_rate: float = 0.0, delay_s: float = 0.0, timeout_s: float = 0.0
) -> Availability:
    """Split the sampled clients into those that answer, fail, or exceed the timeout."""
    if not 0.0 <= dropout_rate <= 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1], got {dropout_rate}")
    out = Availability(answered=[])
    if dropout_rate == 0.0 and delay_s == 0.0:
        out.answered = list(sampled)
        return out
    slowest = 0.0
    for cid in sampled:
        u, e = client_draws(seed, round_idx, cid)
        if u < dropout_rate:
            out.failed.append(cid)
            continue
        delay = e * delay_s
        if timeout_s > 0 and delay > timeout_s:
            out.timed_out.append(cid)
            continue
        out.answered.append(cid)
        slowest = max(slowest, delay)
    # A server cannot tell a dead client from a slow one: if anyone is missing it waits the full timeout.
    out.round_time_s = timeout_s if (out.dropped and timeout_s > 0) else slowest
    return out
