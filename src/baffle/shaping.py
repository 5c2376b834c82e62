"""Server-side transforms of the aggregated K-vector of loss differences (beyond the paper).

They run in ONE place, ``ServerStrategy.apply_loss_diffs``, on the round's aggregated vector before the
gradient is rebuilt, so every client runtime (torch loop, batched engine, ONNX, Flower, secure aggregation)
benefits without changing what a client computes or uploads.

* ``baseline = "mean"`` (a control variate): dL_k - mean_j dL_j. A forward difference is
  dL_k = sigma eps_k.g + (sigma^2/2) eps_k^T H eps_k + ...; the second term has mean (sigma^2/2) tr(H), a
  common offset that multiplies sum_k eps_k in the estimate and adds pure noise of norm ~ offset*sqrt(n/K)/sigma.
  Subtracting the sample mean removes it. Because E[eps_k] = 0 the estimate stays unbiased up to a factor
  (1 - 1/K) (the mean includes dL_k itself). The same idea as the baseline in REINFORCE / ES.
* ``shaping = "rank"`` (ES fitness shaping, Salimans et al. 2017; Wierstra et al. 2014): replace each dL_k
  by its centered rank in [-0.5, 0.5], rescaled to the standard deviation of the dL vector so the step size
  keeps its meaning. Invariant to monotone distortions of the loss and robust to outliers (one huge dL from a
  lucky or broken direction no longer dominates); biased, so it is an option to measure, not a default.
"""

from __future__ import annotations

import numpy as np

from baffle.config.choices import BASELINES, SHAPINGS  # the one list of valid choices per key


def centered_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` mapped linearly onto [-0.5, 0.5] (ties broken by position; K=1 gives 0)."""
    K = len(x)
    ranks = np.empty(K, dtype=np.float64)
    ranks[np.argsort(x, kind="stable")] = np.arange(K, dtype=np.float64)
    return ranks / max(K - 1, 1) - 0.5


def shape_diffs(diffs: np.ndarray, baseline: str = "none", shaping: str = "none") -> np.ndarray:
    """The K-vector the server rebuilds its gradient from (float32, same length)."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    if shaping not in SHAPINGS:
        raise ValueError(f"unknown shaping {shaping!r}; valid: {', '.join(SHAPINGS)}")
    d = np.asarray(diffs, dtype=np.float64)
    if baseline == "mean":
        d = d - d.mean()
    if shaping == "rank":
        r = centered_ranks(d)
        spread = r.std()
        d = r * (d.std() / spread) if spread > 0 else np.zeros_like(d)
    return d.astype(np.float32)
