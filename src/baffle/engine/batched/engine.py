"""The batched engine: many perturbed copies of the model evaluated in one call.

The reference loop runs K+1 (or 2K) separate forwards of one minibatch. Each is a small computation (a
LeNet forward at batch 32 is ~0.3 GFLOP) paid with the full per-call overhead of every layer. Here a chunk
of P perturbed models runs as ONE model whose every layer is P times wider (:mod:`.kernels`), interpreted
from an fx trace (:mod:`.program`); the P weight sets are ``W + c_p * eps_p``, written tensor by tensor
straight from each seed's direction stream (no chunk-of-directions block beside them), and P comes from a
memory budget (:mod:`.planner`). A model the interpreter cannot batch is run with the reference loop. The result equals the loop's to float32 rounding (``tests/engine/test_batched.py``).

The same pass evaluates the perturbed models on several clients' minibatches concatenated
(:meth:`BatchedEngine.multi_client`): all clients of a simulated round share the seeds, so one pass serves
them all while each client's loss stays separate (per-sample losses, then per-client means).

Chunks are independent, so ``workers > 1`` evaluates them on that many threads at once (coarse parallelism
for models too small to feed torch's intra-op threads; each worker's ops run inline at one intra-op thread).
The chunk size never depends on ``workers`` (chunks are balanced: 21 members at most 16 -> 11 + 10), so the
losses are the same for every worker count.
"""

from __future__ import annotations

import logging
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baffle.engine.allocator import retain_freed_memory
from baffle.engine.base import (DEFAULT_NOISE, Batch, Engine, LossFn, Params, Seeds, direction_writer,
                                feature_cache_bytes)
from baffle.engine.batched.feature_cache import FeatureCache
from baffle.engine.batched.kernels import ColsCache, Unsupported, lift
from baffle.engine.batched.planner import CACHE_BYTES, MAX_CHUNK, Budget
from baffle.engine.batched.program import Program
from baffle.engine.loop import loss_differences
from baffle.prefix import row_digests
from baffle.protocol.schemes import check_scheme

#: A chunk's directions are generated whole (one generator call per direction) when they fit in this many bytes:
#: lenet_small's 11 x 4,874 floats are 214 kB; a 22.7M-parameter model never comes near it.
DIRECTION_BLOCK_BYTES = 4 << 20

log = logging.getLogger("baffle")


def _members(K: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """Which direction each evaluated model uses (-1: none, the base point) and its sign.

    forward: [base, +1, +2, ...]; central: [+1, -1, +2, -2, ...] (a pair never straddles chunks when the
    chunk size is even, so each direction is generated once)."""
    if scheme == "forward":
        idx = np.concatenate([[-1], np.arange(K)])
        sign = np.concatenate([[0.0], np.ones(K)])
    else:
        idx = np.repeat(np.arange(K), 2)
        sign = np.tile([1.0, -1.0], K)
    return idx.astype(np.int64), sign


def _per_sample_losses(logits: torch.Tensor, y: torch.Tensor, P: int, loss_fn: LossFn, segments: Sequence[int]) -> torch.Tensor:
    """(P, S) mean loss of every member on every segment (client) of the batch; logits (B, P*O)."""
    B = logits.shape[0]
    z = logits.view(B, P, -1)
    if loss_fn is F.cross_entropy:
        per = F.cross_entropy(z.transpose(0, 1).reshape(P * B, -1), y.repeat(P), reduction="none").view(P, B)
        return torch.stack([seg.mean(1) for seg in per.split(list(segments), dim=1)], dim=1)
    out = torch.empty(P, len(segments), device=logits.device)
    start = 0
    for s, length in enumerate(segments):
        for p in range(P):
            out[p, s] = loss_fn(z[start : start + length, p], y[start : start + length])
        start += length
    return out


def chunk_spans(total: int, most: int, unit: int = 1) -> list[tuple[int, int]]:
    """(start, stop) of each chunk: as few chunks as ``most`` members per chunk allows, their sizes equal to
    within one ``unit`` (a central-difference +/- pair is one unit and never straddles two chunks, unless the
    planner allows a single member per chunk: then memory wins and a pair's direction is generated twice).

    21 members at most 4 per chunk are 4+4+4+3+3+3, not 4+4+4+4+4+1: a one-member chunk pays every
    per-call cost for a sixth of the work, and with two workers the last chunk decides when the call ends.
    Each member's forward is its own, so the split changes no value beyond float32 summation order (the default
    job's losses are bit-identical under both splits: benchmarks/chunk_split.py)."""
    if most < unit:
        unit = 1
    units, per = total // unit, max(1, most // unit)
    n = -(-units // per)
    spans, start = [], 0
    for i in range(n):
        size = (units // n + (1 if i < units % n else 0)) * unit
        spans.append((start, start + size))
        start += size
    return spans


def _unit(scheme: str) -> int:
    """Members that must share a chunk: a central difference's +/- pair (one direction, generated once)."""
    return 2 if scheme == "central" else 1


class BatchedEngine(Engine):
    """``estimator.engine = "batched"``; see the module docstring."""

    name = "batched"

    def __init__(self, max_memory_mb: int = 512, max_chunk: int = MAX_CHUNK, cache_bytes: int = CACHE_BYTES,
                 feature_cache_mb: int = 1024):  # fmt: skip
        if not isinstance(max_memory_mb, int) or isinstance(max_memory_mb, bool) or max_memory_mb < 1:
            raise ValueError(f"max_memory_mb must be a positive integer, got {max_memory_mb!r}")
        if max_chunk < 1:
            raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
        self.budget = Budget(max_memory_mb, max_chunk, cache_bytes)
        # a frozen bottom's output per input row, kept across calls (feature_cache.py); outside the chunk budget
        self.features = FeatureCache(feature_cache_bytes(feature_cache_mb))
        retain_freed_memory()  # its calls free and reallocate the same tensors: keep the pages (engine/allocator.py)
        self._programs: weakref.WeakKeyDictionary[nn.Module, Program | str] = weakref.WeakKeyDictionary()
        self.workers = 1  # threads evaluating chunks at once (engine.threads.chunk_workers sets it per run)
        self._pool: ThreadPoolExecutor | None = None
        self.last_chunk = 0  # members per chunk of the last call (for benchmarks and tests)
        self.last_sub_batch = 0  # samples per batched call of the last call

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
        return self.multi_client(model, params, [(x, y)], seeds, sigma, scheme, loss_fn, noise=noise)[0]

    def supports(self, model: nn.Module) -> bool:
        """Whether ``model`` runs on the batched path (else calls fall back to the loop)."""
        return isinstance(self._program(model), Program)

    def can_fuse_clients(self, model: nn.Module) -> bool:
        """Whether several clients' minibatches may share one pass: the model must be batchable and no
        layer may mix samples (BatchNorm with batch statistics would mix the clients' batches)."""
        prog = self._program(model)
        return isinstance(prog, Program) and not prog.batch_stats

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
        """K loss differences for each of several minibatches under the same seeds, in one pass per chunk.

        With a single batch this is exactly the engine call. With several, the model must not mix samples
        (see :meth:`can_fuse_clients`), otherwise the batches are evaluated one by one.
        """
        check_scheme(scheme)
        if not batches:
            return []
        seeds = np.asarray(seeds)
        prog = self._program(model)
        fallback = lambda: [  # noqa: E731
            loss_differences(model, params, x, y, seeds, sigma, scheme, loss_fn, noise=noise,
                             row_cache_bytes=self.features.max_bytes) for x, y in batches
        ]
        if not isinstance(prog, Program) or (len(batches) > 1 and prog.batch_stats):
            return fallback()
        try:
            return self._batched(prog, params, batches, seeds, sigma, scheme, loss_fn, noise)
        except Unsupported as e:
            log.info("batched engine: %s; using the loop for %s", e, type(model).__name__)
            self._programs[model] = str(e)
            return fallback()

    def call_size(
        self, model: nn.Module, params: Params, samples: int, sample_shape: tuple[int, ...], K: int, scheme: str,
    ) -> tuple[int, int]:  # fmt: skip
        """(members, samples) of each batched call for K directions on ``samples`` inputs of ``sample_shape``
        perturbing ``params``: the planner's chunk and slice (1 member, all samples, if not batchable).

        The thread policy (``engine.threads``) sizes its work estimate with it."""
        prog = self._program(model)
        if not isinstance(prog, Program):
            return 1, samples
        shared = prog.shared_for(p for _, p in params)
        return self._plan(prog, sum(p.numel() for _, p in params), samples, sample_shape, K, scheme, shared)

    def frozen_bottom(self, model: nn.Module, params: Params) -> frozenset[str]:
        """Names of the layers each call runs once for every member when only ``params`` are perturbed
        (``Program.shared_nodes``): empty unless a layer with parameters is frozen below the trained ones."""
        prog = self._program(model)
        if not isinstance(prog, Program):
            return frozenset()
        shared = prog.shared_for(p for _, p in params)
        return frozenset(str(n.target) for n in shared if n.op == "call_module")

    def _plan(
        self, prog: Program, n: int, samples: int, sample_shape: tuple[int, ...], K: int, scheme: str,
        shared: frozenset = frozenset(),
    ) -> tuple[int, int]:  # fmt: skip
        total = K + 1 if scheme == "forward" else 2 * K
        P = self.budget.chunk_size(prog, n, samples, tuple(sample_shape), total, shared)
        P = -(-total // -(-total // P))  # balanced chunks, never larger: 21 members at most 16 -> 11 + 10
        if scheme == "central" and P > 1 and P % 2:
            P -= 1  # a +/- pair never straddles two chunks: each direction is generated once
        return P, self.budget.sub_batch(prog, n, samples, tuple(sample_shape), P, shared)

    def chunks(self, model: nn.Module, params: Params, samples: int, sample_shape: tuple[int, ...], K: int, scheme: str) -> int:
        """How many chunks one call perturbing ``params`` has (the most workers that can be busy at once)."""
        prog = self._program(model)
        if not isinstance(prog, Program):
            return 1
        total = K + 1 if scheme == "forward" else 2 * K
        return len(chunk_spans(total, self.call_size(model, params, samples, sample_shape, K, scheme)[0], _unit(scheme)))

    def _map(self, work, items: list) -> None:
        """work(item) for every item, on ``workers`` threads when there is more than one item."""
        if self.workers > 1 and len(items) > 1:
            if self._pool is None or self._pool._max_workers != self.workers:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="baffle-chunk")
            list(self._pool.map(work, items))
        else:
            for item in items:
                work(item)

    def frozen_top(self, model: nn.Module, trained: Sequence[torch.Tensor], x: torch.Tensor) -> tuple[nn.Module, list[torch.Tensor]] | None:
        """``(top, inputs)`` with ``top(*inputs) == model(x)`` where only the tensors ``trained`` need gradients and a
        frozen bottom lies below them: its rows come from the feature cache (computed and kept on a miss), ``top`` is
        the rest of the model (:meth:`Program.top`). None when there is no such bottom, the cache is off, or a layer
        mixes samples; the caller then runs the whole model. For backprop clients (``baffle.baselines``)."""
        prog = self._program(model)
        if isinstance(prog, str) or not self.features.max_bytes or prog.batch_stats:
            return None
        shared = prog.shared_for(trained)
        split = prog.top(shared) if shared else None
        if split is None:
            return None
        top, frontier = split
        with torch.inference_mode():
            values = self.features.prefix(prog, x, shared)
        # clones: inference tensors cannot be saved for backward (the first trained layer keeps its input)
        return top, [values[n].t.clone() for n in frontier]

    def _program(self, model: nn.Module) -> Program | str:
        """The model's traced program, or why it cannot be batched (cached per model object)."""
        prog = self._programs.get(model)
        if prog is None:
            try:
                prog = Program(model)
            except Unsupported as e:
                log.info("batched engine: %s; using the loop for %s", e, type(model).__name__)
                prog = str(e)
            self._programs[model] = prog
        return prog

    def _batched(
        self, prog: Program, params: Params, batches: Sequence[Batch], seeds: np.ndarray, sigma: float,
        scheme: str, loss_fn: LossFn, noise: str,
    ) -> list[np.ndarray]:  # fmt: skip
        K = len(seeds)
        segments = [len(y) for _, y in batches]
        x = batches[0][0] if len(batches) == 1 else torch.cat([b[0] for b in batches])
        y = batches[0][1] if len(batches) == 1 else torch.cat([b[1] for b in batches])
        plist = [p for _, p in params]
        shared = prog.shared_for(plist)  # a frozen bottom: computed once, below
        # the rows' digests for the feature cache, taken from the host copy before the batch moves to run.device
        keys = row_digests(x) if shared and self.features.max_bytes and not prog.batch_stats else None
        device = plist[0].device  # every tensor of the pass lives where the parameters do (run.device)
        x, y = x.to(device), y.to(device)
        n = sum(p.numel() for p in plist)
        offsets = np.cumsum([0] + [p.numel() for p in plist]).tolist()
        idx, sign = _members(K, scheme)
        total = len(idx)
        P, sub = self._plan(prog, n, x.shape[0], tuple(x.shape[1:]), K, scheme, shared)
        self.last_chunk, self.last_sub_batch = P, sub
        losses = np.empty((total, len(batches)), dtype=np.float64)
        flats = [p.detach().reshape(-1) for p in plist]
        # what every chunk computes alike from the input (kernels._shared_input_conv); when the batch is split into
        # slices, at most SLICED_COLS_SHARE of the memory budget of them (the planner leaves that much out)
        cols_cache = ColsCache(None if sub >= x.shape[0] else self.budget.sliced_cols_bytes())
        # the frozen bottom's output for each slice of the batch, which every chunk starts from: the same values each
        # chunk computed for itself before 2026-12-05 (the plan, now sized without the bottom, is what may differ),
        # the rows of samples an earlier call saw read from the feature cache
        with torch.inference_mode():
            starts = {
                b0: self.features.prefix(prog, x[b0 : b0 + sub], shared, keys[b0 : b0 + sub] if keys else None)
                for b0 in range(0, x.shape[0], sub)
            } if shared else {}  # fmt: skip

        @torch.inference_mode()
        def chunk(span: tuple[int, int]) -> None:  # members [start, stop): independent of every other chunk
            start, stop = span
            c_idx, c_sign = idx[start:stop], sign[start:stop]
            m = len(c_idx)
            dirs = np.unique(c_idx[c_idx >= 0])
            local = torch.from_numpy(np.searchsorted(dirs, np.maximum(c_idx, 0)) if len(dirs) else np.zeros(m, np.int64)).to(device)
            coef = torch.tensor(c_sign * sigma, dtype=torch.float32, device=device).view(m, 1)
            writers = [direction_writer(seeds[d], noise) for d in dirs]
            block = None
            if 0 < len(dirs) * n * 4 <= DIRECTION_BLOCK_BYTES:
                # small models: each direction in ONE generator call (the same stream, so the same values as
                # tensor by tensor); per-call overhead, not generation, is what small tensors pay
                block = torch.empty(len(dirs), n, device=device)
                for j, fill in enumerate(writers):
                    fill(block[j])
            # otherwise the chunk's directions are written tensor by tensor, each straight from its seed's
            # stream, so no (directions x n) block exists beside the (members x n) perturbed weights
            weights = {}
            for i, (p, flat) in enumerate(zip(plist, flats)):
                if block is not None:
                    D = block[:, offsets[i] : offsets[i + 1]]
                else:
                    D = torch.empty(len(dirs), p.numel(), device=device) if len(dirs) else torch.zeros(1, p.numel(), device=device)
                    for j, fill in enumerate(writers):
                        fill(D[j])
                E = D.index_select(0, local) if len(dirs) != m or len(dirs) == 0 else D
                weights[id(p)] = torch.addcmul(flat.unsqueeze(0), coef, E).view(m, *p.shape)
            del D, E, block
            parts = []
            for b0 in range(0, x.shape[0], sub):
                out = prog.run(x[b0 : b0 + sub], m, weights, cols_cache, starts.get(b0), shared)
                parts.append(out.t if out.batched else lift(out.t, m))
            logits = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
            losses[start : start + m] = _per_sample_losses(logits, y, m, loss_fn, segments).double().cpu().numpy()

        self._map(chunk, chunk_spans(total, P, _unit(scheme)))
        if scheme == "forward":
            diffs = losses[1:] - losses[0:1]
        else:
            diffs = (losses[0::2] - losses[1::2]) / 2.0
        return [diffs[:, j].astype(np.float32) for j in range(len(batches))]
