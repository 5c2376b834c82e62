"""The batched engine's memory planner: how many perturbed members per chunk, how many samples per call.

Two bounds decide a chunk: memory (P copies of the weights and directions plus activations must fit
``max_memory_mb``) and cache (one layer's input+output for the whole chunk should stay in a last-level
cache: bigger chunks were measured slower, because the norm/activation/pooling passes then stream from
DRAM; docs/performance.md). The cache bound counts the tensors a pass materialises: a chain the compiled
kernel runs (convolution ->) GroupNorm -> activation -> pool reads its input and writes its pooled output,
nothing between. When even one member at the full batch is over the cache bound, a model whose layers treat
samples independently is evaluated in equal slices of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from baffle.engine.batched import norm_act_pool as nap
from baffle.engine.batched.program import Program

MIN_CHUNK = 1
MAX_CHUNK = 64
# Members per chunk are also limited so that one layer's input+output for the whole chunk stays within
# about this many bytes (a last-level cache).
CACHE_BYTES = 16 * 2**20
# When one member at the full batch is already over CACHE_BYTES, the batch is evaluated in equal slices of
# at most this working set (models without batch statistics only): measured to halve a WRN-10-2 step's
# peak memory at batch 64 (docs/performance.md).
SLICE_BYTES = 8 * 2**20
# With the batch in slices, the engine keeps each slice's shared-input im2col for the members after the first (one
# member per chunk, so otherwise every member recomputed every slice's: a fifth of the paper LeNet's step) in at most
# this share of the memory budget, which the slices' activations then do not get.
SLICED_COLS_SHARE = 1 / 8


def activation_floats(prog: Program, sample_shape: tuple[int, ...], shared: frozenset[torch.fx.Node] = frozenset()) -> tuple[int, int]:
    """Per sample, the largest (inputs + output) floats any one pass materialises (a fused chain: its input and
    its pooled output, where the compiled kernel runs it), and the largest (inputs + output) of any one layer
    including an im2col-sized convolution workspace (a conservative bound for the memory budget). The nodes in
    ``shared`` (a frozen bottom, ``Program.shared_nodes``) run once per call, not per chunk, and are not counted.

    Measured by running the model's own layers once on a batch of 2 zeros; cached on the program."""
    return _measure(prog, tuple(sample_shape), shared)[:2]


def frontier_floats(prog: Program, sample_shape: tuple[int, ...], shared: frozenset[torch.fx.Node]) -> int:
    """Per sample, the floats of the frozen bottom's output (``Program.frontier``) that one engine call holds for
    the whole batch, every slice's at once, beside the chunks: taken off the memory budget before sizing them."""
    return _measure(prog, tuple(sample_shape), shared)[2] if shared else 0


def _measure(prog: Program, sample_shape: tuple[int, ...], shared: frozenset[torch.fx.Node]) -> tuple[int, int, int]:
    """(io_peak, peak, frontier) per sample; see :func:`activation_floats` and :func:`frontier_floats`."""
    key = (sample_shape, shared)
    if key in prog.activation_cache:
        return prog.activation_cache[key]
    sizes: dict[torch.fx.Node, int] = {}
    peak = io_peak = 0 if shared else int(math.prod(sample_shape))  # with a frozen bottom the input is shared too
    first = next(prog.gm.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    unmaterialised, chain_input = fused_passes(prog) if nap.available() and device.type == "cpu" else (set(), {})
    with torch.inference_mode():
        env: dict[torch.fx.Node, Any] = {}
        for n in prog.nodes:
            if n.op == "placeholder":
                env[n] = torch.zeros((2, *sample_shape), device=device)
            elif n.op == "output":
                continue
            else:
                args = torch.fx.node.map_arg(n.args, lambda a: env[a])
                kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: env[a])
                if n.op == "call_module":
                    env[n] = prog.modules[n.target](*args, **kwargs)
                elif n.op == "call_function":
                    env[n] = n.target(*args, **kwargs)
                elif n.op == "call_method":
                    env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
            out = env.get(n)
            if isinstance(out, torch.Tensor) and n in shared:
                sizes[n] = out.numel() // 2
            elif isinstance(out, torch.Tensor):
                sizes[n] = out.numel() // 2
                ins = sum(sizes.get(a, 0) for a in n.all_input_nodes if a not in shared)  # a shared input is one tensor, not one per member
                work = 0
                if n.op == "call_module" and isinstance(prog.modules[n.target], nn.Conv2d):
                    conv = prog.modules[n.target]
                    kk = math.prod(conv.kernel_size)
                    work = (conv.in_channels * kk) * (out.shape[-1] * out.shape[-2])  # im2col buffer
                peak = max(peak, ins + sizes[n] + work)
                if n in chain_input:
                    io_peak = max(io_peak, sizes.get(chain_input[n], 0) + sizes[n])
                elif n not in unmaterialised:
                    io_peak = max(io_peak, ins + sizes[n])
    frontier = sum(sizes[n] for n in prog.frontier(shared) if n in sizes)
    prog.activation_cache[key] = (io_peak, peak, frontier)
    return io_peak, peak, frontier


def fused_passes(prog: Program) -> tuple[set[torch.fx.Node], dict[torch.fx.Node, torch.fx.Node]]:
    """(nodes a fused chain never materialises, {chain's pooling node: the node whose value the chain reads}).

    A convolution of the model's input counts as fused with its chain: the kernel takes it whenever its filters are
    perturbed, and otherwise its output is one tensor shared by every member, far below the chunk's footprint."""
    skip: set[torch.fx.Node] = set()
    reads: dict[torch.fx.Node, torch.fx.Node] = {}
    for gn, (act, pool) in prog.fused.items():
        skip.update((gn, act))
        reads[pool] = gn.all_input_nodes[0]
    for conv, gn in prog.conv_fused.items():
        skip.add(conv)
        reads[prog.fused[gn][1]] = conv.all_input_nodes[0]
    return skip, reads


@dataclass(frozen=True)
class Budget:
    """The planner's knobs: the memory budget, the most members per chunk, the cache bound."""

    max_memory_mb: int = 512
    max_chunk: int = MAX_CHUNK
    cache_bytes: int = CACHE_BYTES

    def chunk_size(
        self, prog: Program, n: int, batch: int, sample_shape: tuple[int, ...], total: int, shared: frozenset[torch.fx.Node] = frozenset(),
    ) -> int:  # fmt: skip
        """Members per chunk so that weights, directions and activations fit ``max_memory_mb``."""
        io, act = activation_floats(prog, tuple(sample_shape), shared)
        per_member = 4 * (3 * n + 2 * act * batch)  # directions + weights (+ slack) + activations, workspace
        by_memory = self._free_bytes(prog, batch, sample_shape, shared) // max(per_member, 1)
        by_cache = self.cache_bytes // max(4 * io * batch, 1)
        return int(max(MIN_CHUNK, min(self.max_chunk, total, by_memory, by_cache)))

    def sub_batch(
        self, prog: Program, n: int, batch: int, sample_shape: tuple[int, ...], chunk: int, shared: frozenset[torch.fx.Node] = frozenset(),
    ) -> int:  # fmt: skip
        """Samples per call when even one member at the full batch exceeds the working-set bound.

        Only for models whose layers treat samples independently (no batch statistics): their losses
        are per-sample, so a batch can be evaluated in slices with exactly the same values. This is what
        keeps a forward-only step's memory far below a backprop step's at large batches."""
        if chunk > 1 or prog.batch_stats:
            return batch
        io, act = activation_floats(prog, tuple(sample_shape), shared)
        by_cache = self.cache_bytes * SLICE_BYTES // CACHE_BYTES // max(4 * io, 1)
        by_memory = max(self._free_bytes(prog, batch, sample_shape, shared) - 12 * n - self.sliced_cols_bytes(), 0) // max(8 * act, 1)
        most = max(1, min(batch, by_cache, by_memory))
        return -(-batch // -(-batch // most))  # equal slices: 32 samples at most 21 -> 2 x 16

    def sliced_cols_bytes(self) -> int:
        """The most bytes of slices' im2col the engine keeps in one call (``SLICED_COLS_SHARE`` of the budget)."""
        return int(self.max_memory_mb * 2**20 * SLICED_COLS_SHARE)

    def _free_bytes(self, prog: Program, batch: int, sample_shape: tuple[int, ...], shared: frozenset[torch.fx.Node]) -> int:
        """The budget left to the chunks once the frozen bottom's output for the whole batch is held."""
        return max(self.max_memory_mb * 2**20 - 4 * frontier_floats(prog, tuple(sample_shape), shared) * batch, 0)
