"""Prefix caching for forward-only clients (issue 15 item 3), for any network that is a chain of stages.

A forward-only client evaluates the same minibatch at W and at K perturbations of the trained parameters
only. When those are the top of the network, every stage below them computes the same states K+1 times.
:class:`PrefixCache` keeps, for the last input ``x`` (the same tensor object), the state entering the first
stage whose parameters changed between two forwards of it (learned on the second forward and kept for later
minibatches), and runs only the stages from there. It is exact: a stage's parameters are compared with a
snapshot (``torch.equal``) before its cached output is used, because engines write perturbations through
``.data``, which no version counter sees. Inside one engine call (:meth:`PrefixCache.engine_call`, which the
loop engine enters after :meth:`PrefixCache.expect_changes`) the compare is made at the call's first forward of an
input only: the call's Perturber writes nothing but the parameters it named, all above the boundary, so the later
K forwards of that input need no compare (for MiniLM's frozen encoder the compare read 91 MB per forward: most of a
head-only step's time after the encoder). Cost: one copy of the staged parameters and a compare per input per call
(a memory read). Buffers (frozen BatchNorm statistics) never change and are not compared.

Across engine calls (rounds) a sample's state at the boundary never changes while the stages below it do not: with
:meth:`PrefixCache.keep_rows` (the loop engine passes ``estimator.feature_cache_mb``) the cache also keeps that state
per input row, keyed by a digest of the row's bytes, so a run puts each of its samples through the frozen bottom once
and every later minibatch holding it starts at the boundary. A row's state is computed alone (a batch of one), so
the value kept does not depend on the minibatch it first came in: a resumed run, whose store starts empty, computes
the same bits. It differs from a batched bottom's output in the last float32 bits only. The store empties whenever
the snapshot compare finds a stage below the boundary changed, or the boundary moves; once at its byte bound,
batches holding new rows run the plain way.

Used by the BERT text classifier (:mod:`baffle.nlp.bert`: the embeddings, then each block) and by
EfficientNet-Lite (:mod:`baffle.vision.effnet`: the stem, each MBConv block, the top conv).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

#: ``call(i, stage, h, context)``: stage ``i`` applied to the state ``h`` entering it (None for stage 0,
#: which reads what it needs from ``context``, the per-input value ``prepare(x)`` returned)
StageCall = Callable[[int, nn.Module, Any, Any], torch.Tensor]


#: ``stack(rows, context)``: the batch state entering the boundary from its rows' stored states (default
#: :func:`stack_rows`; BERT pads each sentence's token states to the batch's length)
StackRows = Callable[[list[torch.Tensor], Any], torch.Tensor]


def stack_rows(rows: list[torch.Tensor], context: Any) -> torch.Tensor:
    """The default :data:`StackRows`: every row's state has one shape (images)."""
    return torch.stack(rows)


def row_digests(x: torch.Tensor) -> list[bytes]:
    """One 16-byte BLAKE2b digest of each row's bytes: a sample's key in a cross-round cache (an augmented or changed
    sample is a new key; dtype and shape belong to the cache's signature, not the key)."""
    rows = x.detach().reshape(x.shape[0], -1).contiguous().cpu().numpy().view(np.uint8)
    return [hashlib.blake2b(r, digest_size=16).digest() for r in rows]


def tracing() -> bool:
    """Inside torch.jit tracing or an ONNX export: no data-dependent shortcuts (trimming, the prefix cache)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def cache_applies(x: torch.Tensor) -> bool:
    """Whether a forward of ``x`` may use a prefix cache: no autograd (backprop needs every stage's graph), a
    real non-empty tensor, and not inside a trace (which must not bake in one batch's cached state)."""
    return not torch.is_grad_enabled() and not x.is_meta and x.shape[0] > 0 and not tracing()


class PrefixCache:
    """The stage-output cache of one model (see the module docstring). Counters ``stages_run`` /
    ``stages_total`` say how many stages ran against how many a plain forward would run."""

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.snapshot: list[list[torch.Tensor]] | None = None
        self.boundary = 0  # the cached state enters this stage
        self.learned = False  # whether ``boundary`` is known (from ``expect_changes`` or a second forward of one input)
        self.hint: frozenset[int] | None = None  # ids of the parameters the engine said it perturbs
        self.state: Any = None
        self.context: Any = None
        self.stages_run = 0
        self.stages_total = 0
        self.in_call = False  # inside engine_call: only the hinted parameters move between forwards
        self.verified: torch.Tensor | None = None  # the input whose stages were compared in this call
        self.compares = 0  # snapshot compares made (tests count them)
        self.max_row_bytes = 0  # keep_rows: the per-row store's bound (0 = no store)
        self.rows: dict[bytes, torch.Tensor] = {}  # row digest -> its state entering ``rows_boundary``
        self.row_bytes = 0
        self.rows_boundary = -1
        self.rows_full = False  # a row did not fit: batches with new rows run the plain way, none computed alone
        self.row_hits = 0  # rows read from the store / computed alone into it
        self.row_misses = 0

    def keep_rows(self, max_bytes: int) -> None:
        """Keep each input row's state at the boundary across calls, up to ``max_bytes`` (0: keep none)."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"the prefix cache's row store bound must be an integer >= 0 bytes, got {max_bytes!r}")
        self.max_row_bytes = max_bytes
        if not max_bytes:
            self._drop_rows()

    def _drop_rows(self) -> None:
        self.rows, self.row_bytes, self.rows_boundary, self.rows_full = {}, 0, -1, False

    def _stored_state(self, stages: Sequence[nn.Module], x: torch.Tensor, prepare: Callable[[torch.Tensor], Any],
                      call: StageCall, stack: StackRows) -> Any:
        """The state entering the boundary for the batch ``x``, its rows read from the store or computed alone
        into it; None when a new row does not fit (the batch then runs the plain way)."""
        if self.rows_boundary != self.boundary:
            self._drop_rows()
            self.rows_boundary = self.boundary
        keys = row_digests(x)
        new = {k: i for i, k in enumerate(keys) if k not in self.rows}
        if new and self.rows_full:
            return None
        for k, i in new.items():
            ctx, h = prepare(x[i : i + 1]), None
            for j in range(self.boundary):
                h = call(j, stages[j], h, ctx)
            row = h[0].clone()  # its own storage, not a view of the batch of one
            size = row.numel() * row.element_size()
            if self.row_bytes + size > self.max_row_bytes:
                self.rows_full = True
                return None
            self.rows[k], self.row_bytes = row, self.row_bytes + size
        self.row_hits += len(keys) - len(new)
        self.row_misses += len(new)
        return stack([self.rows[k] for k in keys], self.context)

    @contextmanager
    def engine_call(self) -> Iterator["PrefixCache"]:
        """The forwards of one engine call, which perturb only the parameters given to :meth:`expect_changes`: the
        stages below the boundary are compared with their snapshot at the call's first forward of an input, not again
        before each of its other forwards. Between calls (a new plan, a server step) every first forward compares."""
        self.in_call, self.verified = self.hint is not None, None
        try:
            yield self
        finally:
            self.in_call, self.verified = False, None

    def expect_changes(self, params: Sequence[torch.Tensor]) -> None:
        """The parameters the coming forwards will perturb (an engine's trainable set), so the boundary is known
        before the first forward and the stages above it are never copied: a full fine-tune's first step then
        holds no copy of the encoder either. Exactness does not rest on the hint: the stages below the boundary
        are still compared with their snapshot before every use of the cached state."""
        ids = frozenset(id(p) for p in params)
        if ids != self.hint:
            self.hint, self.learned, self.snapshot, self.state, self.x = ids, False, None, None, None
            self._drop_rows()

    def _first_changed(self, params: list[list[torch.Tensor]]) -> int:
        """The first snapshotted stage whose parameters differ from the snapshot (len(snapshot): none)."""
        assert self.snapshot is not None
        self.compares += 1
        for i, (ps, snap) in enumerate(zip(params, self.snapshot)):
            if not all(torch.equal(p, q) for p, q in zip(ps, snap)):
                return i
        return len(self.snapshot)

    def run(self, stages: Sequence[nn.Module], x: torch.Tensor, prepare: Callable[[torch.Tensor], Any],
            call: StageCall, stack: StackRows = stack_rows) -> tuple[Any, Any]:
        """(the last stage's output, ``prepare(x)``), as running every stage in order on ``x`` computes them.

        Once the boundary is learned only the stages below it are snapshotted and compared: they are all a
        cached state depends on. So a model whose first stage trains (a full fine-tune: the boundary is 0)
        keeps no copy of its weights at all, instead of one weight-sized copy per round that could never
        skip a stage.
        """
        if self.hint is not None and not self.learned:
            self.boundary = next((i for i, s in enumerate(stages) if any(id(p) in self.hint for p in s.parameters())),
                                 len(stages))
            self.learned = True
        params = [[p.detach() for p in s.parameters()] for s in stages]
        begin = 0
        if self.x is x and self.snapshot is not None and self.in_call and self.verified is x and self.state is not None:
            begin = self.boundary  # compared at this call's first forward of x; since then only hinted parameters moved
        elif self.x is x and self.snapshot is not None:
            changed = self._first_changed(params)
            if self.state is not None and changed >= self.boundary:
                begin = self.boundary
            else:
                self.state, self.boundary, self.learned = None, changed, True
                del self.snapshot[changed:]  # later checks read only the stages below the boundary
        else:
            self.x, self.state = x, None
            self.context = prepare(x)
            kept = params[: self.boundary] if self.learned else params
            if self.snapshot is None or len(self.snapshot) != len(kept) or self._first_changed(kept) < len(kept):
                self.snapshot = [[p.clone() for p in ps] for ps in kept]
                self._drop_rows()  # rows computed with other weights below the boundary
            if self.max_row_bytes and self.learned and self.boundary > 0:
                self.state = self._stored_state(stages, x, prepare, call, stack)
                begin = self.boundary if self.state is not None else 0
        self.verified = x if self.in_call and self.learned else None
        h = self.state
        for i in range(begin, len(stages)):
            h = call(i, stages[i], h, self.context)
            if i + 1 == self.boundary and self.state is None:
                self.state = h
        self.stages_run += len(stages) - begin
        self.stages_total += len(stages)
        return h, self.context
