"""Fusing a simulated round: all sampled clients' uploads from one engine pass per chunk of directions.

In the in-process simulator every client of a round perturbs the same shared model along the same K
seeded directions, so one pass over the clients' concatenated minibatches serves them all while each
client's loss stays separate (``Engine.multi_client``). This module decides when that is exactly what
each client's own ``step`` would have answered, using only the clients' public surface
(``Client.fusion_key``, ``next_batch``, ``make_upload``), so a client type it does not know is never
fused, just stepped.
"""

from __future__ import annotations

from typing import Any, Sequence

from baffle import estimator
from baffle.protocol.messages import RoundPlan, Upload


def fused_uploads(clients: Sequence[Any], plan: RoundPlan) -> list[Upload] | None:
    """All clients' uploads of one round from one batched pass per chunk, or None if not applicable.

    Used by the in-process simulator (``estimator.fuse_clients = true``). It applies when every client
    offers the same :meth:`~baffle.client.Client.fusion_key` (a plain torch client sharing one model,
    engine, trainable set and loss), the plan carries no weights, and the engine can fuse this model (no
    layer mixes the samples of a batch). Each client still draws its own minibatch with its own sampler,
    in order, so the data stream (and a resumed run) is the same as on the client-by-client path, and
    each upload equals what ``Client.step`` returns to float32 rounding.
    """
    if len(clients) < 2 or plan.weights is not None:
        return None
    keys = [c.fusion_key() if hasattr(c, "fusion_key") else None for c in clients]
    first = keys[0]
    if first is None or any(k != first for k in keys):
        return None
    if not first.engine.can_fuse_clients(first.model):
        return None
    batches = [c.next_batch() for c in clients]
    params = estimator.select_parameters(first.model, list(first.trainable))
    diffs = first.engine.multi_client(
        first.model, params, batches, plan.seeds, plan.sigma, plan.scheme, first.loss_fn, noise=plan.noise
    )
    return [c.make_upload(plan, d, len(b[1])) for c, d, b in zip(clients, diffs, batches)]
