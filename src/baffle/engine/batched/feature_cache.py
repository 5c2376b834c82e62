"""A frozen bottom's output kept across calls, row by row: a sample's features never change during a run.

With ``model.trainable`` covering only the top of a network (rf_cnn's classifier, a head over frozen convolutions),
each engine call computes the frozen bottom once (:meth:`Program.prefix`), yet every round computes it again for the
round's minibatch, though a sample's features depend only on the sample and the frozen weights: for rf_cnn at K=1000
that was ~40% of a round. :class:`FeatureCache` keeps the bottom's output for each input row it has seen, keyed by a
digest of the row's bytes, so a run puts each of its samples through the bottom once and every later minibatch holding
it reads the stored row.

Why it is safe:
- the key is the row's bytes (a 16-byte BLAKE2b digest), not its index: an augmented sample (a new crop every round)
  is a new key, computed and never confused with another; the same image twice is rightly one key;
- the frozen layers' parameters and buffers are compared with a snapshot (``torch.equal``) before every use, and
  the cache empties when they moved (a plan with other frozen weights), as when the program, the set of perturbed
  parameters or the input's shape changes;
- it applies only where no layer mixes samples (``Program.batch_stats`` is false), so a row's value does not depend
  on the minibatch around it; a convolution may still round a row differently at another batch size (float32, the
  last bits: ``tests/engine/test_feature_cache.py`` bounds it), as may the fill's chunks of :data:`FILL_ROWS`.

Memory: at most ``max_bytes`` of rows (``estimator.feature_cache_mb``); once full, new rows are computed and not stored.
New rows go through the bottom :data:`FILL_ROWS` at a time: a bottom's intermediate activations can be far larger than
the rows it leaves (rf_white: 1.6 MB per image before pooling, 9 kB after), and filling a slice of 128 new images at
once made the frozen convolution a client's memory peak (206 MiB for one step at batch 128, forward-only and backprop
alike; 52 MiB in chunks, docs/cifar.md), for 3% more time per fill and the same rows here
(``benchmarks/cache_fill_chunks.py``).
"""

from __future__ import annotations

import torch

from baffle.engine.batched.kernels import Value
from baffle.engine.batched.program import Program
from baffle.prefix import row_digests

#: new rows put through the frozen bottom per call while filling the cache (see the module docstring)
FILL_ROWS = 16


class FeatureCache:
    """See the module docstring. ``hits`` / ``misses`` count rows read from the cache / run through the bottom."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"feature cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._clear(None)

    def _clear(self, signature: tuple | None) -> None:
        self.signature = signature
        self.slots: dict[bytes, int] = {}  # row digest -> row of every stored tensor
        self.store: dict[torch.fx.Node, torch.Tensor] = {}  # frontier node -> (capacity, *row shape)
        self.rows = 0  # rows stored
        self.snapshot: list[torch.Tensor] = []
        self.usable = True  # False when the frontier holds a value that is not one row per sample

    def __len__(self) -> int:
        return self.rows

    def _frozen(self, prog: Program, shared: frozenset[torch.fx.Node]) -> list[torch.Tensor]:
        mods = [prog.modules[n.target] for n in prog.nodes if n in shared and n.op == "call_module"]
        return [t.detach() for m in mods for t in (*m.parameters(), *m.buffers())]

    def prefix(self, prog: Program, x: torch.Tensor, shared: frozenset[torch.fx.Node], keys: list[bytes] | None = None,
               ) -> dict[torch.fx.Node, Value]:  # fmt: skip
        """What ``prog.prefix(x, shared)`` returns, its rows read from the cache where stored. ``keys``: the rows'
        digests when the caller has them (computed on the host copy of ``x`` before it moved to the device)."""
        if not self.max_bytes or not shared or prog.batch_stats:
            return prog.prefix(x, shared)
        signature = (id(prog), shared, tuple(x.shape[1:]), x.dtype, x.device)
        frozen = self._frozen(prog, shared)
        if signature != self.signature or len(frozen) != len(self.snapshot) or not all(
                torch.equal(a, b) for a, b in zip(frozen, self.snapshot)):  # fmt: skip
            self._clear(signature)
            self.snapshot = [t.clone() for t in frozen]
        if not self.usable:
            return prog.prefix(x, shared)
        keys = keys if keys is not None else row_digests(x)
        slot = [self.slots.get(k, -1) for k in keys]
        miss = [i for i, s in enumerate(slot) if s < 0]
        self.hits += len(keys) - len(miss)
        self.misses += len(miss)
        computed: dict[torch.fx.Node, Value] = {}
        if miss:
            computed = self._fill(prog, x if len(miss) == len(keys) else x[miss], shared)
            if not all(not v.batched and v.t.shape[0] == len(miss) for v in computed.values()):
                self.usable = False  # not one row per sample: nothing to key by row
                return prog.prefix(x, shared) if len(miss) != len(keys) else computed
            self._put([keys[i] for i in miss], computed)
            if len(miss) == len(keys):
                return computed  # every row new: the bottom's values, computed FILL_ROWS at a time
        hit = torch.tensor([i for i, s in enumerate(slot) if s >= 0], dtype=torch.long, device=x.device)
        where = torch.tensor([s for s in slot if s >= 0], dtype=torch.long, device=x.device)
        out = {}
        for n, t in self.store.items():
            if not miss:
                out[n] = Value(t.index_select(0, where), False)
                continue
            rows = torch.empty((len(keys), *t.shape[1:]), dtype=t.dtype, device=t.device)
            rows.index_copy_(0, hit, t.index_select(0, where))
            rows.index_copy_(0, torch.tensor(miss, dtype=torch.long, device=x.device), computed[n].t)
            out[n] = Value(rows, False)
        return out

    @staticmethod
    def _fill(prog: Program, x: torch.Tensor, shared: frozenset[torch.fx.Node]) -> dict[torch.fx.Node, Value]:
        """``prog.prefix(x, shared)``, :data:`FILL_ROWS` rows at a time (values that are not one row per sample, which
        the caller then refuses to store, come from one whole call)."""
        if x.shape[0] <= FILL_ROWS:
            return prog.prefix(x, shared)
        chunks = x.split(FILL_ROWS)
        parts = [prog.prefix(c, shared) for c in chunks]
        if not all(not v.batched and v.t.shape[0] == len(c) for c, p in zip(chunks, parts) for v in p.values()):
            return prog.prefix(x, shared)
        return {n: Value(torch.cat([p[n].t for p in parts]), False) for n in parts[0]}

    def _put(self, keys: list[bytes], computed: dict[torch.fx.Node, Value]) -> None:
        """Store the rows of ``keys`` that fit (a key repeated within one batch is stored once)."""
        if not computed:
            return
        row_bytes = sum(v.t[0].numel() * v.t.element_size() for v in computed.values())
        if not self.store:
            self.store = {n: v.t.new_empty((0, *v.t.shape[1:])) for n, v in computed.items()}
        limit = self.max_bytes // max(row_bytes, 1)
        new = {}
        for i, k in enumerate(keys):
            if k not in self.slots and k not in new and self.rows + len(new) < limit:
                new[k] = i
        if not new:
            return
        need = self.rows + len(new)
        capacity = next(iter(self.store.values())).shape[0]
        if need > capacity:  # grow by doubling (never past the limit), so a run copies its rows O(log n) times
            capacity = min(max(need, 2 * capacity, 1024), limit)
            for n, t in self.store.items():
                grown = t.new_empty((capacity, *t.shape[1:]))
                grown[: self.rows] = t[: self.rows]
                self.store[n] = grown
        src = torch.tensor(list(new.values()), dtype=torch.long, device=next(iter(self.store.values())).device)
        for n, t in self.store.items():
            t[self.rows : need] = computed[n].t.index_select(0, src)
        for j, k in enumerate(new):
            self.slots[k] = self.rows + j
        self.rows = need
