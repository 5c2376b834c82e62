"""A defence made for scalars: the server scores each client's K-vector against its own (FLTrust-style).

Only a BAFFLE server can do this cheaply. It knows the round's seeds, so with forward passes alone on a
small trusted root batch it computes its OWN K loss differences r along the very directions the clients
used. An honest client's vector points roughly the same way as r (same directions, similar gradient); a
sign-flipped one points away, a rescaled one has the wrong length. Per round and client i:

    trust_i = max(0, cos(v_i, r))                       (FLTrust's ReLU-clipped cosine)
    rep_i  <- decay * rep_i + (1 - decay) * trust_i      (reputation across rounds; rep starts at 1)
    w_i     = trust_i * rep_i                            (decay = 0: rep stays 1, plain FLTrust)
    result  = sum_i w_i * v_i * |r| / |v_i|  /  sum_i w_i   (every vector rescaled to the reference length)

If no client earns any weight the round steps along r alone. Attackers are consistent and honest minibatch
noise is not, which is what the reputation exploits: a client that keeps pointing away loses its weight
even in a round where it happens to agree. What it cannot stop: attackers that send vectors close to r
(they then do little harm, but also a "slowing" attack that scales r down is only limited by the
rescaling to |r|); a root batch that is not representative (the reference is then biased); and it costs the
server K+1 forward passes of the root batch per round and a model copy.
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
        self.reputation = np.ones(num_clients, dtype=np.float64)
        self.last_weights: dict[int, float] = {}  # client id -> weight of the last round (for inspection)

    def aggregate(self, vectors: np.ndarray, client_ids: list[int], seeds: np.ndarray) -> np.ndarray:
        r = np.asarray(self.reference(seeds), dtype=np.float64)
        v = vectors.astype(np.float64)
        r_norm = float(np.linalg.norm(r))
        norms = np.linalg.norm(v, axis=1)
        cos = (v @ r) / np.maximum(norms * r_norm, 1e-30)
        trust = np.maximum(cos, 0.0)
        ids = np.asarray(client_ids, dtype=np.int64)
        if len(ids) and ids.max() >= len(self.reputation):  # a Flower federation learns its size late
            self.reputation = np.concatenate([self.reputation, np.ones(ids.max() + 1 - len(self.reputation))])
        if self.decay > 0:
            self.reputation[ids] = self.decay * self.reputation[ids] + (1 - self.decay) * trust
        w = trust * self.reputation[ids]
        self.last_weights = {int(i): float(x) for i, x in zip(ids, w)}
        if w.sum() <= 0 or r_norm == 0:
            return r.astype(np.float32)
        scaled = v * (r_norm / np.maximum(norms, 1e-30))[:, None]
        return ((w @ scaled) / w.sum()).astype(np.float32)

    def state_dict(self) -> dict:
        return {"reputation": self.reputation.copy()}

    def load_state_dict(self, state: dict) -> None:
        rep = np.asarray(state["reputation"], dtype=np.float64)
        if rep.ndim != 1 or not np.isfinite(rep).all():
            raise ValueError("trust state: reputation must be a finite vector")
        self.reputation = rep.copy()
