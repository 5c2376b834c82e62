"""Which clients take part in a round: a pure function of the run seed and the round, so a resumed run,
the Flower app and the privacy accountant all see the same clients."""

from __future__ import annotations

from baffle.config import Config
from baffle.protocol import streams


def clients_per_round(cfg: Config) -> int:
    """``federation.clients_per_round`` as a count: a fraction of ``data.num_clients`` or a count > 1."""
    n = cfg.data.num_clients
    c = cfg.federation.clients_per_round
    return min(n, int(c) if c > 1 else max(1, int(round(c * n))))


def sample_clients(cfg: Config, round_idx: int) -> list[int]:
    n = cfg.data.num_clients
    m = clients_per_round(cfg)
    if m >= n:
        return list(range(n))
    rng = streams.rng(cfg.run.seed, streams.CLIENT_SAMPLING, round_idx)
    return sorted(int(i) for i in rng.choice(n, m, replace=False))
