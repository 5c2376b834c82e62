"""The reference engine: one forward per perturbation, the definition every other engine is tested against.

It is deliberately plain (perturb in place, forward, restore) so that it works for any model, including
ones the batched interpreter cannot trace, and so that its numbers define what "bit-identical" means for
the pinned runs.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baffle.engine.base import (DEFAULT_NOISE, Engine, LossFn, Params, Perturber, Seeds, batch_loss, check_sliceable,
                                feature_cache_bytes)
from baffle.protocol.schemes import check_scheme


def loss_differences(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    seeds: Seeds,
    sigma: float,
    scheme: str = "forward",
    loss_fn: LossFn = F.cross_entropy,
    *,
    mask: torch.Tensor | None = None,
    noise: str = DEFAULT_NOISE,
    forward_slice: int = 0,
    row_cache_bytes: int = 0,
) -> np.ndarray:
    """K loss differences for one minibatch, forward passes only.

    ``mask`` (0/1 over the flat parameter vector) restricts every direction to the unpruned weights.
    ``forward_slice`` > 0 evaluates every loss on at most that many samples at a time (``batch_loss``).
    Directions, buffers and the forwards run on the parameters' device (``Perturber``).
    ``row_cache_bytes`` bounds a model's prefix cache's per-row store (:meth:`baffle.prefix.PrefixCache.keep_rows`:
    a frozen bottom's output per sample kept across calls; ``estimator.feature_cache_mb``); 0 keeps none.

    forward: dL_k = L(W + sigma eps_k) - L(W)                (K+1 forwards)
    central: dL_k = [L(W + sigma eps_k) - L(W - sigma eps_k)] / 2   (2K forwards)
    """
    check_scheme(scheme)
    if forward_slice:
        check_sliceable(model)
    out = np.empty(len(seeds), dtype=np.float32)
    if params:  # the minibatch goes where the parameters are (run.device); a no-op on the CPU
        x, y = x.to(params[0][1].device), y.to(params[0][1].device)
    with torch.inference_mode():
        cache = getattr(model, "prefix_cache", None)  # baffle.prefix: tell it what will change (no weight copy)
        if cache is not None:
            cache.expect_changes([p for _, p in params])
            cache.keep_rows(row_cache_bytes)
        rows = read_rows(model, params, x)
        pert = Perturber(params, mask=mask, noise=noise, retain=scheme == "central", rows=rows)
        # one engine call: the prefix cache compares its frozen stages once per input, not before every forward
        with cache.engine_call() if cache is not None else contextlib.nullcontext():
            try:
                base = batch_loss(model, x, y, loss_fn, forward_slice) if scheme == "forward" else 0.0
                for k, seed in enumerate(seeds):
                    pert.set(seed, sigma)
                    plus = batch_loss(model, x, y, loss_fn, forward_slice)
                    if scheme == "forward":
                        out[k] = plus - base
                    else:
                        pert.rescale(-sigma)
                        minus = batch_loss(model, x, y, loss_fn, forward_slice)
                        out[k] = (plus - minus) / 2.0
            finally:
                pert.restore()
    return out


def read_rows(model: nn.Module, params: Params, x: torch.Tensor) -> dict[int, torch.Tensor] | None:
    """{index in ``params``: rows} of the 2-D parameters whose forward on ``x`` reads only some rows, from the
    model's optional ``perturbed_rows(x)`` ({parameter name: row indices}; e.g. the token embeddings of the
    ids in the batch). None when the model does not say."""
    fn = getattr(model, "perturbed_rows", None)
    if fn is None:
        return None
    by_name = fn(x)
    return {i: by_name[name] for i, (name, _) in enumerate(params) if name in by_name} or None


class LoopEngine(Engine):
    """``estimator.engine = "loop"``: :func:`loss_differences` behind the Engine interface."""

    name = "loop"

    def __init__(self, forward_slice: int = 0, feature_cache_mb: int = 0):
        self.forward_slice = forward_slice
        self.row_cache_bytes = feature_cache_bytes(feature_cache_mb)  # a prefix-cached model's bottom, per sample

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
        return loss_differences(model, params, x, y, seeds, sigma, scheme, loss_fn, noise=noise,
                                forward_slice=self.forward_slice, row_cache_bytes=self.row_cache_bytes)
