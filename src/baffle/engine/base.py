"""The Engine interface every client-side estimator implements, and the in-place Perturber.

An engine answers one question: given a model, the perturbed parameters, one minibatch and the round's K
seeds, what are the K loss differences? The loop engine answers it with K+1 (or 2K) separate forwards, the
batched engine with a few wide ones, the masked engine on the unpruned weights only; the client, the
fused simulator path and the benchmarks only ever see this interface, so an engine can be swapped (or a
device engine added) without touching them.

``noise`` names the direction kind (``baffle.protocol.noise.KINDS``: ``"v1"``, ``"v2-gauss"``,
``"v2-rademacher"``). It is a keyword on every call, not engine state, because it belongs to the round
(the server decides it and every party must agree), not to the client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baffle import noise_torch
from baffle.protocol import noise as noise_spec

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Params = Sequence[tuple[str, nn.Parameter]]
Seeds = Union[Sequence[int], np.ndarray]
Batch = tuple[torch.Tensor, torch.Tensor]

DEFAULT_NOISE = "v1"


class Engine(ABC):
    """K loss differences of one minibatch, forward passes only.

    Contract: the result is a float32 array of shape (K,) with ``dL_k = L(W + sigma eps_k) - L(W)``
    (``scheme="forward"``) or ``[L(W + sigma eps_k) - L(W - sigma eps_k)] / 2`` (``"central"``), eps_k the
    direction of ``seeds[k]`` under spec ``noise``; the model's parameters are bit-identical afterwards.
    """

    name: str = "engine"
    workers: int = 1  # threads for independent parts of a call (the batched engine's chunks; others ignore it)

    @abstractmethod
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
        """The K loss differences (see the class docstring)."""

    def can_fuse_clients(self, model: nn.Module) -> bool:
        """Whether :meth:`multi_client` evaluates several minibatches in one pass (else one by one).

        False by default: only an engine that batches perturbations gains anything from fusing."""
        return False

    def multi_client(
        self,
        model: nn.Module,
        params: Params,
        batches: Sequence[Batch],
        seeds: Seeds,
        sigma: float,
        scheme: str = "forward",
        loss_fn: LossFn = F.cross_entropy,
        *,
        noise: str = DEFAULT_NOISE,
    ) -> list[np.ndarray]:
        """K loss differences for each of several minibatches under the same seeds (one by one here)."""
        return [self(model, params, x, y, seeds, sigma, scheme, loss_fn, noise=noise) for x, y in batches]


def direction_writer(seed: int | np.integer, kind: str = DEFAULT_NOISE) -> Callable[[torch.Tensor], None]:
    """A function that fills its float32 tensor argument (contiguous, on any device) with the NEXT elements
    of direction(seed).

    Successive calls continue the same stream, so a direction can be written tensor by tensor without ever
    holding all n values, bit-identical to ``noise.direction(seed, n, kind)`` (tests/engine/test_engine.py).
    The v2 kinds are functions of (seed, index) and are asked for exactly the next range, with
    ``noise_torch.direction``: on the CPU the numpy reference writes straight into the tensor's memory, on
    CUDA the torch kernels run on the device. v1 is not seekable and is defined by numpy's code, so its
    Philox generator is kept between calls and always runs on the CPU; on another device its values are
    copied over (correct, but host-bound: choose a v2 kind to generate on the GPU).
    """
    noise_spec.check_kind(kind)
    if kind == "v1":
        gen = np.random.Generator(np.random.Philox(key=int(seed)))

        def fill_v1(out: torch.Tensor) -> None:
            if out.device.type == "cpu":
                gen.standard_normal(dtype=np.float32, out=out.numpy())
            else:
                out.copy_(torch.from_numpy(gen.standard_normal(out.numel(), dtype=np.float32)))

        return fill_v1
    pos = 0

    def fill_v2(out: torch.Tensor) -> None:
        nonlocal pos
        noise_torch.direction(seed, out.numel(), kind, pos, out=out)
        pos += out.numel()

    return fill_v2


#: Elements of the direction written at once into a dense tensor: tensors above it (token embeddings) are
#: perturbed in pieces, so the scratch buffer is 4 MiB instead of the largest tensor (45 MiB for MiniLM's).
PERTURB_CHUNK = 1 << 20


class Perturber:
    """Writes W + scale*eps_k into the selected parameters in place, tensor by tensor, and restores W exactly.

    No K model copies: one saved copy of the originals, and every perturbed value is written as
    ``original + scale * eps`` from it, so restoring is a copy and cannot drift however many directions
    are evaluated. eps_k is generated straight into a scratch buffer the size of the largest tensor, at most
    ``PERTURB_CHUNK`` elements: larger tensors are written in pieces (``retain=False``), so no model-sized
    temporary exists per direction; ``retain=True`` keeps the whole
    direction in one buffer allocated once, for the central scheme's second point (``rescale``), which
    would otherwise pay the generator twice.

    ``mask`` (0/1 over the flat parameter vector) restricts every direction to the unpruned weights.
    Everything it allocates (the originals, the direction buffer, the mask) lives on the parameters' device.

    ``rows`` ({parameter index: row indices}) names, for 2-D tensors such as token embeddings, the only rows
    the coming forwards read. Only those rows are perturbed, and only their elements of each direction are
    generated (``noise.direction_at``): the other rows cannot change a loss, so the losses are the same and
    a minibatch of a few hundred tokens no longer pays for a 30k-row table. It applies to the seekable v2
    kinds on the CPU without mask or ``retain``; otherwise every row is perturbed as usual.
    """

    def __init__(
        self, params: Params, *, mask: torch.Tensor | None = None, noise: str = DEFAULT_NOISE, retain: bool = False,
        rows: dict[int, torch.Tensor] | None = None,
    ):  # fmt: skip
        self.params = [p for _, p in params]
        self.n = sum(p.numel() for p in self.params)
        if mask is not None and mask.numel() != self.n:
            raise ValueError(f"mask has {mask.numel()} entries, parameters have {self.n}")
        device = self.params[0].device if self.params else torch.device("cpu")
        self.mask = mask.reshape(-1).to(device) if mask is not None else None
        self.noise = noise
        self.retain = retain
        with torch.no_grad():
            self.originals = [p.detach().clone() for p in self.params]
        self.offsets = np.cumsum([0] + [p.numel() for p in self.params]).tolist()
        sparse = rows and noise != "v1" and mask is None and not retain and device.type == "cpu"
        # parameter index -> (row indices, flat element indices of those rows, the rows' original values)
        self.rows: dict[int, tuple[torch.Tensor, np.ndarray, torch.Tensor]] = {}
        for i, r in (rows or {}).items() if sparse else ():
            p = self.params[i]
            if p.dim() != 2:
                continue
            r = torch.unique(r.to(torch.int64).reshape(-1))
            cols = p.shape[1]
            flat = self.offsets[i] + r.numpy()[:, None] * cols + np.arange(cols)[None, :]
            self.rows[i] = (r, flat.reshape(-1), self.originals[i].index_select(0, r))
        dense = [p for i, p in enumerate(self.params) if i not in self.rows]
        size = self.n if retain else max((self._pieces(p) for p in dense), default=0)
        self._buf = torch.empty(size, dtype=torch.float32, device=device)
        self._has_direction = False

    def _eps(self, i: int) -> torch.Tensor:
        """The buffer slice that holds tensor i's part of the direction."""
        k = self.params[i].numel()
        if self.retain:
            return self._buf[self.offsets[i] : self.offsets[i] + k]
        return self._buf[:k]

    def _pieces(self, p: torch.Tensor) -> int:
        """Elements of tensor ``p`` written at once: all of them, unless it is a large contiguous tensor and the
        direction is not retained (then ``PERTURB_CHUNK``, the scratch buffer's bound)."""
        k = p.numel()
        return k if self.retain or k <= PERTURB_CHUNK or not p.data.is_contiguous() else PERTURB_CHUNK

    def _direction(self, seed: int | np.integer, fill: Callable[[torch.Tensor], None] | None, i: int, a: int,
                   e: torch.Tensor) -> None:
        """e := elements [a, a + len(e)) of tensor i's part of direction(seed), masked when the run is pruned."""
        if fill is not None:  # the stream continues piece by piece (v1 too)
            fill(e)
        else:  # seekable v2: this range of the direction, wherever the skipped rows left off
            noise_torch.direction(seed, e.numel(), self.noise, self.offsets[i] + a, out=e)
        if self.mask is not None:
            e.mul_(self.mask[self.offsets[i] + a : self.offsets[i] + a + e.numel()])

    @torch.no_grad()
    def set(self, seed: int | np.integer, scale: float) -> None:
        """parameters := originals + scale * eps(seed) [* mask], generated tensor by tensor."""
        fill = direction_writer(seed, self.noise) if not self.rows else None
        for i, (p, orig) in enumerate(zip(self.params, self.originals)):
            if i in self.rows:  # only the rows the forwards read (see the class docstring)
                r, flat, orig_rows = self.rows[i]
                e = torch.from_numpy(noise_spec.direction_at(seed, flat, self.noise)).view_as(orig_rows)
                p.data.index_copy_(0, r, torch.add(orig_rows, e, alpha=scale))
                continue
            k, step = p.numel(), self._pieces(p)
            if step == k:
                e = self._eps(i)
                self._direction(seed, fill, i, 0, e)
                torch.add(orig, e.view_as(p), alpha=scale, out=p.data)
                continue
            flat_o, flat_p = orig.view(-1), p.data.view(-1)  # a large tensor (token embeddings) in pieces
            for a in range(0, k, step):
                e = self._buf[: min(step, k - a)]
                self._direction(seed, fill, i, a, e)
                torch.add(flat_o[a : a + len(e)], e, alpha=scale, out=flat_p[a : a + len(e)])
        self._has_direction = self.retain

    @torch.no_grad()
    def rescale(self, scale: float) -> None:
        """parameters := originals + scale * (the direction of the last ``set``); needs ``retain=True``."""
        if not self._has_direction:
            raise RuntimeError("rescale() needs a Perturber(retain=True) and a preceding set()")
        for i, (p, orig) in enumerate(zip(self.params, self.originals)):
            torch.add(orig, self._eps(i).view_as(p), alpha=scale, out=p.data)

    @torch.no_grad()
    def restore(self) -> None:
        for i, (p, orig) in enumerate(zip(self.params, self.originals)):
            if i in self.rows:  # the other rows were never written
                r, _, orig_rows = self.rows[i]
                p.data.index_copy_(0, r, orig_rows)
            else:
                p.data.copy_(orig)


def feature_cache_bytes(feature_cache_mb: int) -> int:
    """Bytes of ``estimator.feature_cache_mb``, as every engine takes it (a frozen bottom's output per sample:
    the batched engine's feature cache, a prefix-cached model's row store); an error for anything but an int >= 0."""
    if not isinstance(feature_cache_mb, int) or isinstance(feature_cache_mb, bool) or feature_cache_mb < 0:
        raise ValueError(f"feature_cache_mb must be an integer >= 0 (0 = off), got {feature_cache_mb!r}")
    return feature_cache_mb * 2**20


def batch_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn = F.cross_entropy, forward_slice: int = 0
) -> float:
    """The minibatch's mean loss; with ``forward_slice`` > 0, evaluated on at most that many samples at a time.

    Why slices: a forward-only client needs only this scalar, so it can push the minibatch through in pieces and
    hold one piece's activations at a time (backprop must keep every activation of the whole batch). The mean
    of per-sample losses is the slices' means weighted by their sizes, summed in float64; equal to the unsliced
    loss up to float32 rounding (not bit-identical: the reduction order differs). Per-sample models only: a
    BatchNorm in training mode would see other batch statistics, and the loop engine refuses that.
    """
    n = len(x)
    if forward_slice <= 0 or forward_slice >= n:
        return float(loss_fn(model(x), y))
    total = 0.0
    for a in range(0, n, forward_slice):
        xs, ys = x[a : a + forward_slice], y[a : a + forward_slice]
        total += float(loss_fn(model(xs), ys)) * len(xs)
    return total / n


def check_sliceable(model: nn.Module) -> None:
    """Refuse slicing a model whose forward mixes samples (a BatchNorm normalising with batch statistics)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            raise ValueError(f"estimator.forward_slice: {name or 'the model'} is a BatchNorm using batch statistics, so "
                             "each sample's output depends on the others; slicing would change the loss (use "
                             "model.norm='group', or forward_slice=0)")
