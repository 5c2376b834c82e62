"""Pruned models in a BAFFLE federation: a fixed mask that the server keeps and every client applies.

A pruned client's model has zeros it must keep (the deployed sparse kernel may not even store them), so
it perturbs only unpruned weights: eps_k is regenerated from the seed as usual and multiplied by the
mask (the client side is :class:`baffle.engine.MaskedEngine`). The server reconstructs with the same
masked directions, g = mask * 1/(K sigma) sum dL_k eps_k, which is the Stein estimate of the gradient
restricted to the unpruned coordinates; pruned weights get a zero gradient and stay exactly zero (Adam
moves nothing whose gradient is always zero). The estimator's error scales with sqrt(n_unpruned / K), so pruning also makes the zeroth-order estimate less noisy.

The mask is a pure function of the initial weights (per-tensor magnitude pruning of weight matrices and
kernels; biases are kept), so a resumed run rebuilds the same mask.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from baffle import estimator


def magnitude_mask(params: Sequence[tuple[str, torch.Tensor]], fraction: float) -> np.ndarray:
    """Flat bool mask (True = kept) that prunes the ``fraction`` smallest-|w| entries of every tensor
    with 2+ dims (layer by layer, so no layer is emptied); 1-D tensors (biases) are kept whole."""
    if not 0 <= fraction < 1:
        raise ValueError(f"pruning fraction must be in [0, 1), got {fraction}")
    parts = []
    for _, p in params:
        w = p.detach().reshape(-1).abs().cpu().numpy()
        keep = np.ones(w.size, dtype=bool)
        drop = int(np.floor(fraction * w.size)) if p.dim() > 1 else 0
        if drop:
            keep[np.argsort(w, kind="stable")[:drop]] = False
        parts.append(keep)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


@torch.no_grad()
def apply_mask(params: Sequence[tuple[str, torch.Tensor]], mask: np.ndarray) -> None:
    """Zero the pruned entries in place."""
    n = estimator.num_elements(params)
    if mask.shape != (n,):
        raise ValueError(f"mask has shape {mask.shape}, parameters have {n} elements")
    offset = 0
    for _, p in params:
        k = p.numel()
        p.mul_(torch.from_numpy(mask[offset : offset + k].astype(np.float32)).view_as(p).to(p.device))
        offset += k
