"""[estimator]: the zeroth-order estimate (K directions, sigma, scheme), its engine, server-side shaping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from baffle.config.checks import ConfigError, choice, positive
from baffle.config.choices import BASELINES, ENGINES, NOISE_KINDS, SCHEMES, SHAPINGS

if TYPE_CHECKING:
    from baffle.config.core import Config


@dataclass
class EstimatorConfig:
    K: int = 20  # the fast recipe (every table uses it); at 42k passes K=50-100 did ~1.5 points better (k_sweep)
    sigma: float = 1e-3
    scheme: str = "forward"  # forward (K+1 forwards) | central (twin-point, 2K forwards)
    engine: str = "batched"  # batched | loop
    max_memory_mb: int = 512  # memory budget of the batched engine's perturbation chunks
    feature_cache_mb: int = 1024  # a frozen bottom's output per sample kept across rounds (batched engine, prefix cache); 0 = off
    forward_slice: int = 0  # loop engine: evaluate each loss on at most this many samples at a time; 0 = whole batch
    baseline: str = "none"  # server-side: none | mean (subtract mean_k dL_k; baffle.shaping)
    shaping: str = "none"  # server-side: none | rank (ES centered-rank fitness shaping; baffle.shaping)
    seed_pool: int = 0  # server-side: reuse a pool of this many directions (a multiple of K), K per round; 0 = fresh
    fuse_clients: bool = True  # simulator: one batched pass over all sampled clients' minibatches (same uploads)
    noise: str = "v2-gauss"  # direction spec: v2-gauss | v2-rademacher | v1 (numpy Philox normal, the default until 2026-12) (baffle.protocol.noise)


def validate(e: EstimatorConfig, cfg: "Config") -> None:
    positive("estimator.K", e.K)
    if not e.sigma > 0:
        raise ConfigError(f"estimator.sigma must be > 0, got {e.sigma}")
    choice("estimator.scheme", e.scheme, SCHEMES)
    choice("estimator.engine", e.engine, ENGINES)
    positive("estimator.max_memory_mb", e.max_memory_mb)
    if isinstance(e.feature_cache_mb, bool) or not isinstance(e.feature_cache_mb, int) or e.feature_cache_mb < 0:
        raise ConfigError(f"estimator.feature_cache_mb must be an integer >= 0 (0 = off), got {e.feature_cache_mb!r}")
    if isinstance(e.forward_slice, bool) or not isinstance(e.forward_slice, int) or e.forward_slice < 0:
        raise ConfigError(f"estimator.forward_slice must be an integer >= 0 (0 = the whole minibatch), got {e.forward_slice!r}")
    if e.forward_slice and e.engine != "loop" and not cfg.model.prune:
        raise ConfigError("estimator.forward_slice slices the loop engine's forwards: set estimator.engine='loop' "
                          "(the batched engine bounds its memory with estimator.max_memory_mb)")
    choice("estimator.baseline", e.baseline, BASELINES)
    choice("estimator.shaping", e.shaping, SHAPINGS)
    choice("estimator.noise", e.noise, NOISE_KINDS)
    if (e.baseline, e.shaping) != ("none", "none") and cfg.run.method != "baffle":
        raise ConfigError("estimator.baseline/shaping transform the server's aggregated K-vector: they need run.method='baffle'")
    if e.seed_pool and cfg.run.method != "baffle":
        raise ConfigError("estimator.seed_pool reuses the round seeds of scalar rounds: it needs run.method='baffle'")
    if e.seed_pool and (e.seed_pool < e.K or e.seed_pool % e.K):
        raise ConfigError(f"estimator.seed_pool must be 0 or a multiple of estimator.K={e.K}, got {e.seed_pool}")
    if not isinstance(e.fuse_clients, bool):
        raise ConfigError(f"estimator.fuse_clients must be true or false, got {e.fuse_clients!r}")
