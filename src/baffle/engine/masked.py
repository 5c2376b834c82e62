"""The engine of a pruned federation: every direction restricted to the unpruned weights.

A pruned client's model has zeros it must keep (the deployed sparse kernel may not even store them), so
it perturbs only unpruned weights: eps_k is regenerated from the seed as usual and multiplied by the mask
(``baffle.pruning`` builds the mask; the server reconstructs with the same masked directions).

It evaluates with the reference loop whatever ``estimator.engine`` says: the batched interpreter does not
apply masks, and the pinned pruned runs are defined by the loop's numbers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baffle.engine.base import DEFAULT_NOISE, Engine, LossFn, Params, Seeds
from baffle.engine.loop import loss_differences


class MaskedEngine(Engine):
    """Loss differences along masked directions eps_k * mask (mask: True/1 = kept, flat over the params)."""

    name = "masked"

    def __init__(self, mask: np.ndarray | torch.Tensor, forward_slice: int = 0):
        self.mask = torch.as_tensor(np.asarray(mask, dtype=np.float32))
        self.forward_slice = forward_slice

    def __call__(
        self,
        model: nn.Module,
        params: Params,
        x: torch.Tensor,
        y: torch.Tensor,
        seeds: Seeds,
        sigma: float,
        scheme: str = "forward",
        loss_fn: LossFn = F.cross_entropy,
        *,
        noise: str = DEFAULT_NOISE,
    ) -> np.ndarray:
        if params and self.mask.device != params[0][1].device:  # moved once, not per call (run.device)
            self.mask = self.mask.to(params[0][1].device)
        return loss_differences(model, params, x, y, seeds, sigma, scheme, loss_fn, mask=self.mask, noise=noise,
                                forward_slice=self.forward_slice)
