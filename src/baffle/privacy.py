"""Differential privacy on the uploaded scalars: clip, add Gaussian noise, account the budget.

What is protected: each client's K loss differences (the only thing computed from its private data that
leaves it; seeds, round ids and the batch size are public). The unit of privacy is a CLIENT: two
federations are neighbours when one client's data is replaced by anything else ("replace-one"; the number
of clients is public). A clipped vector lies in the L2 ball of radius C = ``privacy.clip``, so replacing a
client moves it by at most 2C: the L2 sensitivity is 2C and noise of standard deviation z*C
(z = ``privacy.noise_multiplier``) is a Gaussian mechanism with noise multiplier z/2 relative to it.

* ``local``: every client clips its own vector and adds N(0, (zC)^2 I_K) before uploading, so nothing it
  sends (to a server it need not trust) is more than a Gaussian mechanism. The server sees who took part,
  so there is no amplification by subsampling: a client's epsilon is the composition over the rounds it
  actually uploaded in; we report the worst client's.
* ``central``: clients send raw vectors (e.g. under secure aggregation); the server clips each, sums them,
  adds N(0, (zC)^2 I_K) once, divides by the number of uploads. Only the noisy aggregate is released, and
  the random choice of ``m`` of ``N`` clients per round amplifies privacy ("sampled without replacement").

Epsilon at ``privacy.delta`` is computed by Google's ``dp-accounting`` RDP accountant. Noise is drawn
from generators seeded by (run seed, round, client), so a resumed run is noised identically.

The scale of the vectors: dL_k ~ sigma * <grad, eps_k>, so ||dL|| ~ sigma * |grad| * sqrt(K); choose C
near the typical norm (measured in docs/robustness.md) so clipping bites only outliers.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from baffle.protocol import streams
from baffle.protocol.messages import Upload

from baffle.config.choices import PRIVACY_MODES as MODES  # the one list of valid choices per key


def clip_l2(vector: np.ndarray, clip: float) -> np.ndarray:
    """``vector`` scaled down to L2 norm at most ``clip`` (float32)."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    if norm > clip:
        v = v * (clip / norm)
    return v.astype(np.float32)


def gaussian_noise(std: float, size: int, seed: int, round_idx: int, stream: int) -> np.ndarray:
    """Reproducible noise: ``stream`` is a client id (local mode) or -1 (the server, central mode)."""
    rng = streams.rng(seed, streams.DP_NOISE, round_idx, stream + 1)
    return rng.normal(0.0, std, size)


def privatize_upload(u: Upload, clip: float, noise_multiplier: float, seed: int) -> Upload:
    """Local DP, on the client before upload: clip to ``clip`` and add N(0, (z*clip)^2) per coordinate."""
    v = clip_l2(u.loss_diffs, clip).astype(np.float64)
    v += gaussian_noise(noise_multiplier * clip, v.size, seed, u.round, int(u.client_id))
    return dataclasses.replace(u, loss_diffs=v.astype(np.float32))


def central_mean(vectors: np.ndarray, clip: float, noise_multiplier: float, seed: int, round_idx: int) -> np.ndarray:
    """Central DP: (sum of clipped vectors + N(0, (z*clip)^2 I)) / number of vectors."""
    vectors = np.asarray(vectors)
    total = np.zeros(vectors.shape[1], dtype=np.float64)
    for v in vectors:
        total += clip_l2(v, clip)
    total += gaussian_noise(noise_multiplier * clip, total.size, seed, round_idx, -1)
    return (total / len(vectors)).astype(np.float32)


def epsilon(
    mode: str,
    noise_multiplier: float,
    delta: float,
    *,
    rounds: int = 0,
    num_clients: int = 1,
    clients_per_round: int = 1,
    max_participations: int = 0,
) -> float:
    """Epsilon at ``delta`` (replace-one-client adjacency) after the given rounds.

    central: ``rounds`` rounds, each sampling ``clients_per_round`` of ``num_clients`` without replacement.
    local: the worst client's ``max_participations`` uploads, each a Gaussian mechanism, no amplification.
    0 when nothing was released; inf without noise.
    """
    if mode == "none":
        return float("inf")
    count = rounds if mode == "central" else max_participations
    if count <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    import dp_accounting
    from dp_accounting import rdp

    z = noise_multiplier / 2.0  # noise std over the replace-one sensitivity 2C
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(z)
    if mode == "central" and clients_per_round < num_clients:
        event = dp_accounting.SampledWithoutReplacementDpEvent(num_clients, clients_per_round, event)
    acc = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    absl = logging.getLogger("absl")  # the accountant warns per RDP order it cannot use; that is not news
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        acc.compose(event, count)
        return float(acc.get_epsilon(delta))
    finally:
        absl.setLevel(level)


class PrivacyLedger:
    """Tracks what the accountant needs during a run: rounds with a release and per-client uploads.

    Pure bookkeeping over the answering sets, which are themselves pure functions of seed and round, so a
    resumed run rebuilds it by replaying ``record`` for the rounds already done.
    """

    def __init__(self, mode: str, noise_multiplier: float, delta: float, num_clients: int, clients_per_round: int):
        self.mode, self.z, self.delta = mode, noise_multiplier, delta
        self.num_clients, self.m = num_clients, clients_per_round
        self.rounds = 0
        self.participations = np.zeros(num_clients, dtype=np.int64)
        self._cache: tuple[int, int, float] | None = None

    def record(self, answered: Sequence[int]) -> None:
        """A round was run and ``answered`` uploaded (a round counts even if later skipped: noise was drawn)."""
        self.rounds += 1
        for cid in answered:
            self.participations[cid] += 1

    def epsilon(self) -> float:
        key = (self.rounds, int(self.participations.max(initial=0)))
        if self._cache is None or self._cache[:2] != key:
            eps = epsilon(
                self.mode,
                self.z,
                self.delta,
                rounds=self.rounds,
                num_clients=self.num_clients,
                clients_per_round=self.m,
                max_participations=key[1],
            )
            self._cache = (*key, eps)
        return self._cache[2]
