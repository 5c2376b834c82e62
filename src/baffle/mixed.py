"""A mixed federation: some clients are ONNX Runtime processes, the rest torch; the server cannot tell.

The simulator swaps the chosen clients for :class:`baffle.onnx_client.OnnxClient` objects with the same
id, data indices and sampler seed (so they draw the same minibatches the torch client would have), the
model exported once with :func:`baffle.export.export_onnx`, and the server's pruning mask if any. Each
round they receive the global weights as numpy arrays (``with_numpy_weights``); everything they send back is the
same ``Upload`` message, validated and aggregated by the unchanged server.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import torch

from baffle.config import Config
from baffle.data.dataset import Dataset
from baffle.export import export_onnx, numpy_weights
from baffle.protocol.messages import RoundPlan
from baffle.onnx_client import OnnxClient

log = logging.getLogger(__name__)

#: the smallest sigma at which int8 clients' loss differences stay above their own rounding once the model has
#: trained a little (experiments/int8_sigma.py; docs/inference-clients.md, "the sigma rule")
INT8_MIN_SIGMA = 1e-2


def onnx_client_ids(cfg: Config) -> list[int]:
    """Which clients run ONNX Runtime: the first m ids (fraction or count of data.num_clients)."""
    n, f = cfg.data.num_clients, cfg.federation.onnx_clients
    m = int(f) if f > 1 else int(round(f * n))
    return list(range(min(m, n)))


def swap_in_onnx_clients(
    cfg: Config, clients: Sequence, train: Dataset, model: torch.nn.Module, mask: np.ndarray | None
) -> list:
    """``clients`` with the configured ones replaced by ONNX Runtime clients (same ids, data, seeds)."""
    ids = onnx_client_ids(cfg)
    if not ids:
        return list(clients)
    if cfg.federation.onnx_precision == "int8" and cfg.estimator.sigma < INT8_MIN_SIGMA:
        log.warning("int8 clients with estimator.sigma=%g: below %g their loss differences drown in int8 rounding once "
                    "the model has trained (docs/inference-clients.md, the sigma rule); set estimator.sigma=%g",
                    cfg.estimator.sigma, INT8_MIN_SIGMA, INT8_MIN_SIGMA)
    graph = export_onnx(model, tuple(train.x.shape[1:]))
    x, y = train.x.numpy(), train.y.numpy()  # shared views, no copy
    out = list(clients)
    for i in ids:
        old = clients[i]
        out[i] = OnnxClient(
            old.client_id,
            x,
            y,
            old.indices,
            graph,
            batch_size=cfg.federation.batch_size,
            seed=old.sampler.seed,
            trainable=cfg.model.trainable,
            mask=mask,
            precision=cfg.federation.onnx_precision,
            threads=max(1, cfg.run.threads),
        )
    return out


def with_numpy_weights(plan: RoundPlan, global_weights: dict[str, torch.Tensor]) -> RoundPlan:
    """The round's plan carrying the global weights as numpy arrays, for inference-only clients."""
    return dataclasses.replace(plan, weights=numpy_weights(global_weights))
