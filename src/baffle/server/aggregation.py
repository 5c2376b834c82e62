"""Aggregating the clients' K-vectors of loss differences.

Because every client of a round perturbs along the same K directions, the gradient estimate is linear in
the loss-difference vector: aggregating K scalars per client IS aggregating their gradient estimates.
That makes robust statistics cheap (K numbers, not a model) and secure aggregation possible (a sum).
"""

from __future__ import annotations

import numpy as np


def weighted_mean(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    w = weights.astype(np.float64) / weights.sum()
    return (w @ vectors.astype(np.float64)).astype(np.float32)


def coordinate_median(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.median(vectors, axis=0).astype(np.float32)


def trimmed_mean(vectors: np.ndarray, weights: np.ndarray, trim_fraction: float = 0.1) -> np.ndarray:
    """Per coordinate, drop the ``trim_fraction`` largest and smallest values, average the rest."""
    m = len(vectors)
    t = int(np.floor(trim_fraction * m))
    if m - 2 * t < 1:
        t = (m - 1) // 2
    s = np.sort(vectors, axis=0)
    return s[t : m - t].mean(axis=0).astype(np.float32)


def clipped_mean(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Scale each vector down to at most the median L2 norm, then take the weighted mean."""
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    bound = float(np.median(norms))
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-30))
    return weighted_mean(vectors * scale[:, None], weights)


def multi_krum(vectors: np.ndarray, weights: np.ndarray, byzantine_fraction: float = 0.1) -> np.ndarray:
    """Multi-Krum (Blanchard et al. 2017): keep the n - f vectors closest to their n - f - 2 nearest
    neighbours, take their weighted mean. f = floor(byzantine_fraction * n).

    Coordinate-wise statistics judge each of the K numbers alone; with few, noisy clients the median of a
    coordinate is pulled toward zero by sign-flipped values. Krum judges whole vectors: honest K-vectors are
    positively correlated (same directions, similar gradients), a flipped or rescaled one is far from all of
    them. O(n^2 K), trivial for K scalars.
    """
    n = len(vectors)
    f = min(int(np.floor(byzantine_fraction * n)), max(0, n - 1))
    v = vectors.astype(np.float64)
    sq = (v * v).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * v @ v.T, 0.0)
    neighbours = max(1, n - f - 2)
    scores = np.sort(d2, axis=1)[:, 1 : neighbours + 1].sum(1) if n > 1 else np.zeros(1)
    keep = np.argsort(scores, kind="stable")[: max(1, n - f)]
    return weighted_mean(vectors[keep], weights[keep])


def aggregate(vectors: np.ndarray, weights: np.ndarray, method: str = "mean", trim_fraction: float = 0.1) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"need a non-empty (clients, K) array, got shape {vectors.shape}")
    if method == "mean":
        return weighted_mean(vectors, weights)
    if method == "median":
        return coordinate_median(vectors, weights)
    if method == "trimmed_mean":
        return trimmed_mean(vectors, weights, trim_fraction)
    if method == "clipped_mean":
        return clipped_mean(vectors, weights)
    if method == "multi_krum":  # trim_fraction doubles as the assumed fraction of Byzantine clients
        return multi_krum(vectors, weights, trim_fraction)
    raise ValueError(f"unknown aggregator {method!r}; valid: mean, median, trimmed_mean, clipped_mean, multi_krum (fltrust lives in baffle.server.trust)")
