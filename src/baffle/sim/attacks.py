"""Byzantine clients, injected in the simulator to measure robust aggregation.

A fixed, seeded subset of the clients (``federation.attack_fraction`` of ``data.num_clients``) is hostile
for the whole run, which is the usual Byzantine model: the attacker controls the same devices every round.
Each hostile client first computes its honest K-vector (so the attack works whatever engine or fused path
produced it) and then sends a corrupted one instead:

* ``scale_neg10``: -10 x the honest vector (pushes the model uphill, hard);
* ``scale_100``: 100 x the honest vector (huge, right direction: breaks a plain mean's step size);
* ``noise``: Gaussian noise with 10 x the honest vector's RMS (pure garbage of plausible size);
* ``sign_flip``: -1 x the honest vector (uphill, with an honest-looking norm: the hardest to spot).

Everything is a pure function of (run seed, round, client id), so a resumed run is attacked identically.
The corrupted values stay finite and under the server's magnitude limit: these are uploads that pass
validation and must be defeated by the aggregator, not by the validator.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from baffle.protocol import streams
from baffle.protocol.messages import Upload

from baffle.config.choices import ATTACKS  # the one list of valid choices per key
_SCALES = {"scale_neg10": -10.0, "scale_100": 100.0, "sign_flip": -1.0}
_NOISE_RMS_FACTOR = 10.0


def attacker_ids(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """The hostile clients: round(fraction * num_clients) of them, a seeded random choice fixed for the run."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"attack fraction must be in [0, 1], got {fraction}")
    m = int(round(fraction * num_clients))
    if m == 0:
        return frozenset()
    rng = streams.rng(seed, streams.ATTACKERS, num_clients)
    return frozenset(int(i) for i in rng.choice(num_clients, m, replace=False))


def corrupt(diffs: np.ndarray, attack: str, seed: int, round_idx: int, client_id: int) -> np.ndarray:
    """The vector a hostile client sends instead of its honest ``diffs`` (float32, same shape)."""
    diffs = np.asarray(diffs, dtype=np.float32)
    if attack in _SCALES:
        return (diffs * np.float32(_SCALES[attack])).astype(np.float32)
    if attack == "noise":
        rms = float(np.sqrt(np.mean(diffs.astype(np.float64) ** 2))) if diffs.size else 0.0
        rng = streams.rng(seed, streams.ATTACK_NOISE, round_idx, client_id)
        return rng.normal(0.0, _NOISE_RMS_FACTOR * max(rms, 1e-6), diffs.shape).astype(np.float32)
    if attack == "none":
        return diffs
    raise ValueError(f"unknown attack {attack!r}; valid: {', '.join(ATTACKS)}")


def apply_attack(
    uploads: Sequence[Upload], attack: str, attackers: frozenset[int], seed: int, round_idx: int
) -> list[Upload]:
    """Replace the uploads of hostile clients by corrupted ones; honest uploads pass through untouched."""
    if attack == "none" or not attackers:
        return list(uploads)
    out = []
    for u in uploads:
        if isinstance(u, Upload) and u.client_id in attackers:
            u = dataclasses.replace(u, loss_diffs=corrupt(u.loss_diffs, attack, seed, round_idx, u.client_id))
        out.append(u)
    return out
