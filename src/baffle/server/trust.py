"""A defence made for scalars: the server scores each client's K-vector against its own, round after round.

Only a BAFFLE server can do this cheaply. It knows the round's seeds, so with forward passes alone on a
small trusted root batch it computes its OWN K loss differences r along the very directions the clients
used. An honest client's vector points, on average, the same way as r; a sign-flipped one points away. Near
convergence one round says little (minibatch noise dominates: on the default task the honest clients'
cosine with r averaged 0.09 by round 300, and 37% of them were <= 0), but attackers are consistent and
honest noise is not, so the score is a reputation, an average over rounds:

    rep_i  <- decay * rep_i + (1 - decay) * cos(v_i, r)     (rep starts at 0; decay = 0: this round only)
    w_i     = max(rep_i, 0)
    v_i    <- v_i * min(1, median_j |v_j| / |v_i|)            (no vector counts more than the median length)
    result  = sum_i w_i v_i / sum_i w_i                         (r alone when nobody has a positive reputation)

This is FLTrust's idea (Cao et al., 2021: ReLU-clipped cosine to a server-side reference) adapted to noisy
K-vectors. Measured on the converged default recipe with 30% sign-flippers (docs/results.md): FLTrust's
per-round score with rescaling to |r| stalled at 76% (the plain mean reached 85%); a reputation over ~100
rounds (decay 0.99) reached 88.6%, declining after round 1500 as honest cosines shrank toward 0; over
~1,000 rounds (decay 0.999, the default) 93.3%, against 93.85% without attackers. What it cannot stop: attackers that send vectors close to r (they then do
little harm), a root batch that is not representative (the reference is then biased), attackers that behave
until their reputation is high (a slowly decaying reputation limits how fast they can spend it), and it
costs the server K+1 forward passes of the root batch per round and a model copy.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# reference(seeds) -> the server's own K loss differences at the current global weights
Reference = Callable[[np.ndarray], np.ndarray]


class TrustAggregator:
    def __init__(self, reference: Reference, num_clients: int, decay: float = 0.0):
        self.reference = reference
        self.decay = decay
        self.reputation = np.zeros(num_clients, dtype=np.float64)
        self.last_weights: dict[int, float] = {}  # client id -> weight of the last round (for inspection)

    def aggregate(self, vectors: np.ndarray, client_ids: list[int], seeds: np.ndarray) -> np.ndarray:
        r = np.asarray(self.reference(seeds), dtype=np.float64)
        v = vectors.astype(np.float64)
        norms = np.linalg.norm(v, axis=1)
        cos = (v @ r) / np.maximum(norms * float(np.linalg.norm(r)), 1e-30)
        ids = np.asarray(client_ids, dtype=np.int64)
        if len(ids) and ids.max() >= len(self.reputation):  # a Flower federation learns its size late
            self.reputation = np.concatenate([self.reputation, np.zeros(ids.max() + 1 - len(self.reputation))])
        self.reputation[ids] = self.decay * self.reputation[ids] + (1 - self.decay) * cos
        w = np.maximum(self.reputation[ids], 0.0)
        self.last_weights = {int(i): float(x) for i, x in zip(ids, w)}
        if w.sum() <= 0:
            return r.astype(np.float32)
        clipped = v * np.minimum(1.0, float(np.median(norms)) / np.maximum(norms, 1e-30))[:, None]
        return ((w @ clipped) / w.sum()).astype(np.float32)

    def state_dict(self) -> dict:
        return {"reputation": self.reputation.copy()}

    def load_state_dict(self, state: dict) -> None:
        rep = np.asarray(state["reputation"], dtype=np.float64)
        if rep.ndim != 1 or not np.isfinite(rep).all():
            raise ValueError("trust state: reputation must be a finite vector")
        self.reputation = rep.copy()
