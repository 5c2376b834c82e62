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

Used by the BERT text classifier (:mod:`baffle.nlp.bert`: the embeddings, then each block) and by
EfficientNet-Lite (:mod:`baffle.vision.effnet`: the stem, each MBConv block, the top conv).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

#: ``call(i, stage, h, context)``: stage ``i`` applied to the state ``h`` entering it (None for stage 0,
#: which reads what it needs from ``context``, the per-input value ``prepare(x)`` returned)
StageCall = Callable[[int, nn.Module, Any, Any], torch.Tensor]


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

    def _first_changed(self, params: list[list[torch.Tensor]]) -> int:
        """The first snapshotted stage whose parameters differ from the snapshot (len(snapshot): none)."""
        assert self.snapshot is not None
        self.compares += 1
        for i, (ps, snap) in enumerate(zip(params, self.snapshot)):
            if not all(torch.equal(p, q) for p, q in zip(ps, snap)):
                return i
        return len(self.snapshot)

    def run(self, stages: Sequence[nn.Module], x: torch.Tensor, prepare: Callable[[torch.Tensor], Any],
            call: StageCall) -> tuple[Any, Any]:
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
        self.verified = x if self.in_call and self.learned else None
        h = self.state
        for i in range(begin, len(stages)):
            h = call(i, stages[i], h, self.context)
            if i + 1 == self.boundary and self.state is None:
                self.state = h
        self.stages_run += len(stages) - begin
        self.stages_total += len(stages)
        return h, self.context
