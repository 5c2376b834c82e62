"""The zeroth-order (Stein) gradient estimator: loss differences on a client, reconstruction on a server.

Client side: for each seeded direction eps_k, evaluate the loss at W + sigma*eps_k (and at W for the
forward scheme, or at W - sigma*eps_k for the central/twin-point scheme), forward passes only.
Server side: g = 1/(K*sigma) * sum_k dL_k * eps_k, regenerating eps_k from its seed chunk by chunk.

Perturbation is done in place on the model's own parameters (no K model copies) and every perturbed value
is written as ``original + scale * eps`` from one saved copy of the originals, so restoring is a copy and
cannot drift however many directions are evaluated.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from baffle.protocol import noise

SCHEMES = ("forward", "central")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def select_parameters(model: torch.nn.Module, trainable: Sequence[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters that are perturbed and trained, in a fixed order (the flat vector's layout).

    ``trainable`` is a list of glob patterns over parameter names (``["fc.*", "*.norm*"]``); None or
    empty means every parameter. A pattern that matches nothing is an error: a typo would otherwise
    silently freeze the whole model.
    """
    named = [(n, p) for n, p in model.named_parameters()]
    if not trainable:
        return named
    chosen = [(n, p) for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in trainable)]
    for pat in trainable:
        if not any(fnmatch.fnmatchcase(n, pat) for n, _ in named):
            names = ", ".join(n for n, _ in named)
            raise ValueError(f"trainable pattern {pat!r} matches no parameter; parameters are: {names}")
    return chosen


def num_elements(params: Sequence[tuple[str, torch.Tensor]]) -> int:
    return sum(p.numel() for _, p in params)


class Perturber:
    """Writes W + scale*eps into the selected parameters in place, and restores W exactly."""

    def __init__(self, params: Sequence[tuple[str, torch.nn.Parameter]]):
        self.params = [p for _, p in params]
        self.n = sum(p.numel() for p in self.params)
        with torch.no_grad():
            self.originals = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def set(self, eps: torch.Tensor, scale: float) -> None:
        """parameters := originals + scale * eps (eps flat, length n)."""
        offset = 0
        for p, orig in zip(self.params, self.originals):
            k = p.numel()
            torch.add(orig, eps[offset : offset + k].view_as(p), alpha=scale, out=p.data)
            offset += k

    @torch.no_grad()
    def restore(self) -> None:
        for p, orig in zip(self.params, self.originals):
            p.data.copy_(orig)


def batch_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn = F.cross_entropy) -> float:
    return float(loss_fn(model(x), y))


def loss_differences(
    model: torch.nn.Module,
    params: Sequence[tuple[str, torch.nn.Parameter]],
    x: torch.Tensor,
    y: torch.Tensor,
    seeds: Sequence[int] | np.ndarray,
    sigma: float,
    scheme: str = "forward",
    loss_fn: LossFn = F.cross_entropy,
    *,
    mask: torch.Tensor | None = None,
) -> np.ndarray:
    """K loss differences for one minibatch, forward passes only (the reference loop implementation).

    ``mask`` (0/1 over the flat parameter vector) restricts every direction to the unpruned weights.

    forward: dL_k = L(W + sigma eps_k) - L(W)                (K+1 forwards)
    central: dL_k = [L(W + sigma eps_k) - L(W - sigma eps_k)] / 2   (2K forwards)
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; valid: {SCHEMES}")
    out = np.empty(len(seeds), dtype=np.float32)
    with torch.inference_mode():
        pert = Perturber(params)
        if mask is not None and mask.numel() != pert.n:
            raise ValueError(f"mask has {mask.numel()} entries, parameters have {pert.n}")
        try:
            base = batch_loss(model, x, y, loss_fn) if scheme == "forward" else 0.0
            for k, seed in enumerate(seeds):
                eps = torch.from_numpy(noise.direction(seed, pert.n))
                if mask is not None:
                    eps = eps * mask
                pert.set(eps, sigma)
                plus = batch_loss(model, x, y, loss_fn)
                if scheme == "forward":
                    out[k] = plus - base
                else:
                    pert.set(eps, -sigma)
                    minus = batch_loss(model, x, y, loss_fn)
                    out[k] = (plus - minus) / 2.0
        finally:
            pert.restore()
    return out


def forward_passes(num_directions: int, scheme: str) -> int:
    """Forward passes of one minibatch a client runs for one estimate."""
    return num_directions + 1 if scheme == "forward" else 2 * num_directions


def reconstruct(
    loss_diffs: np.ndarray, seeds: Sequence[int] | np.ndarray, sigma: float, n: int, chunk: int = 32
) -> np.ndarray:
    """g = 1/(K sigma) sum_k dL_k eps_k, holding at most ``chunk`` directions in memory at once."""
    loss_diffs = np.asarray(loss_diffs, dtype=np.float32)
    if loss_diffs.shape != (len(seeds),):
        raise ValueError(f"expected {len(seeds)} loss differences, got shape {loss_diffs.shape}")
    g = np.zeros(n, dtype=np.float64)
    for start, eps in noise.iter_direction_chunks(seeds, n, chunk):
        g += loss_diffs[start : start + len(eps)].astype(np.float64) @ eps
    return (g / (len(seeds) * sigma)).astype(np.float32)


def write_flat_grad(params: Sequence[tuple[str, torch.nn.Parameter]], flat: np.ndarray | torch.Tensor) -> None:
    """Store a flat gradient vector into ``.grad`` of the parameters so any torch optimizer can step."""
    flat_t = torch.as_tensor(flat, dtype=torch.float32)
    offset = 0
    for _, p in params:
        k = p.numel()
        p.grad = flat_t[offset : offset + k].view_as(p).clone()
        offset += k


@dataclass
class Estimate:
    """A reconstructed gradient and what it cost (kept for metrics)."""

    grad: np.ndarray
    num_directions: int
    forward_passes: int
