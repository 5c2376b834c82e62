"""The zeroth-order (Stein) gradient estimator's shared pieces: the perturbed parameters and the gradient.

Client side: the K loss differences are computed by an engine (:mod:`baffle.engine`: loop, batched,
masked). Server side: g = 1/(K*sigma) * sum_k dL_k * eps_k is :mod:`baffle.reconstruct`. Both sides agree
on which parameters form the flat vector (:func:`select_parameters`) and write a flat gradient back into
``.grad`` (:func:`write_flat_grad`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from baffle.protocol.layout import select_names


def select_parameters(model: torch.nn.Module, trainable: Sequence[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters that are perturbed and trained, in a fixed order (the flat vector's layout).

    ``trainable`` is a list of glob patterns over parameter names; the rule (and its error for a
    pattern that matches nothing) is :func:`baffle.protocol.layout.select_names`, shared with the
    ONNX client.
    """
    named = dict(model.named_parameters())
    return [(n, named[n]) for n in select_names(list(named), trainable)]


def num_elements(params: Sequence[tuple[str, torch.Tensor]]) -> int:
    return sum(p.numel() for _, p in params)


def write_flat_grad(params: Sequence[tuple[str, torch.nn.Parameter]], flat: np.ndarray | torch.Tensor) -> None:
    """Store a flat gradient vector into ``.grad`` of the parameters so any torch optimizer can step
    (on the parameters' device: a numpy vector is copied there)."""
    flat_t = torch.as_tensor(flat, dtype=torch.float32, device=params[0][1].device if params else None)
    offset = 0
    for _, p in params:
        k = p.numel()
        p.grad = flat_t[offset : offset + k].view_as(p).clone()
        offset += k
