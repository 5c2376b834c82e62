"""Per-op kernels of the batched engine: each layer evaluated for P perturbed members at once.

Values are either shared by all members (the model's own shape) or per member, with the members side by
side in the channel dimension, layout ``(B, P*C, ...)``. That layout is chosen so that per-channel and
per-group operations need no change at all; the layers below are the ones that do: a convolution whose
input is shared is one convolution with P*C_out outputs (im2col + one wide GEMM for few input channels),
with per-member input a grouped convolution (groups = P); a linear layer is one wide GEMM or a batched
matmul; norms run with P times the groups/channels and a per-member affine map.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

class Unsupported(Exception):
    """The interpreter met something it cannot batch; the caller falls back to the reference loop."""


@dataclass
class Value:
    """A node's value: ``shared`` (same for all members, the model's own shape) or per member
    (``batched``: layout (B, P*C, ...), members side by side in dim 1)."""

    t: torch.Tensor
    batched: bool


def logical(t: torch.Tensor, P: int) -> torch.Size:
    return torch.Size((t.shape[0], t.shape[1] // P, *t.shape[2:]))


def lift(t: torch.Tensor, P: int) -> torch.Tensor:
    """Shared (B, C, ...) -> per-member layout (B, P*C, ...), every member a copy."""
    B, C = t.shape[0], t.shape[1]
    return t.unsqueeze(1).expand(B, P, C, *t.shape[2:]).reshape(B, P * C, *t.shape[2:])


def stacked(p: torch.Tensor | None, P: int, weights: dict) -> tuple[torch.Tensor | None, bool]:
    """(P, *shape) copies of a parameter and whether they differ per member."""
    if p is None:
        return None, False
    w = weights.get(id(p))
    if w is not None:
        return w, True
    return p.detach().unsqueeze(0).expand(P, *p.shape), False


def check_params_shared(m: nn.Module, weights: dict) -> None:
    if any(id(p) in weights for p in m.parameters(recurse=False)):
        raise Unsupported(f"perturbed parameters in {type(m).__name__}")


def is_tiling_pool(m: nn.MaxPool2d) -> bool:
    """A max-pool whose windows tile the input (kernel == stride, no padding/dilation/indices, floor mode: a
    ceil-mode pool keeps the partial windows at an odd border, which the tiling kernels drop)."""
    k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
    return k == s and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1) and not m.return_indices and not m.ceil_mode


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def tiling_max_pool2d(t: torch.Tensor, kernel: Any) -> torch.Tensor:
    """Max-pool with non-overlapping windows as elementwise maxima of strided views: first over the kh rows
    of each window (whole rows, so the reads run along contiguous memory), then over the kw columns of the
    row maxima, which are kh times fewer.

    Bit-identical to ``F.max_pool2d`` (a max is exact, in any order) and, measured on this project's CPU,
    over 10x faster than torch's NCHW pooling kernel on the wide (B, P*C, H, W) tensors of a chunk; the
    rows-then-columns order is ~3x faster than taking the k*k views one by one
    (benchmarks/bench_client.py, docs/performance.md).
    """
    kh, kw = _pair(kernel)
    H, W = t.shape[-2] - t.shape[-2] % kh, t.shape[-1] - t.shape[-1] % kw  # floor mode drops the border
    rows = _max_of_views([t[..., i:H:kh, :W] for i in range(kh)])
    return _max_of_views([rows[..., j::kw] for j in range(kw)])


def _max_of_views(views: list[torch.Tensor]) -> torch.Tensor:
    if len(views) == 1:  # a new tensor even then: the caller may overwrite it (program._IN_PLACE)
        return views[0].clone(memory_format=torch.contiguous_format)
    out = torch.maximum(views[0], views[1])
    for v in views[2:]:
        torch.maximum(out, v, out=out)
    return out


# Largest im2col buffer (bytes) the shared-input convolution may build; above it, use the direct conv.
_UNFOLD_LIMIT = 64 * 2**20


class ColsCache(dict):
    """The im2col matrices one engine call's chunks share (``shared_im2col``), up to ``limit`` bytes: past it a
    matrix is not kept (its next reader recomputes it), so a batch split into slices keeps what fits of every
    slice's matrix instead of recomputing each slice's for every member."""

    def __init__(self, limit: int | None = None):
        super().__init__()
        self.limit, self.held = limit, 0

    def __setitem__(self, key, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        size = value[1].numel() * value[1].element_size()
        if self.limit is not None and self.held + size > self.limit:
            return
        self.held += size
        super().__setitem__(key, value)


def shared_im2col(m: nn.Conv2d, x: torch.Tensor, cols_cache: dict | None = None, aligned: bool = False) -> tuple[torch.Tensor, int, int]:
    """(cols, Ho, Wo): the im2col matrix (B, C_in*kh*kw, Ho*Wo) of convolution ``m`` on the shared input ``x``
    (``aligned``: each row zero-padded to a multiple of 8 values, as the fused kernel reads it).

    It depends on the input alone, so every chunk of one engine call reuses it through ``cols_cache`` (which
    holds the input, so its address stays its own)."""
    kh, kw = _pair(m.kernel_size)
    key = (id(m), x.data_ptr(), tuple(x.shape), tuple(x.stride()), aligned)
    hit = cols_cache.get(key) if cols_cache is not None else None
    if hit is not None:
        cols = hit[1]
    else:
        cols = F.unfold(x, (kh, kw), dilation=m.dilation, padding=m.padding, stride=m.stride)  # (B, Cin*kh*kw, L)
        if aligned:
            cols = F.pad(cols, (0, -cols.shape[-1] % 8)).contiguous()
        if cols_cache is not None:
            cols_cache[key] = (x, cols)
    Ho = (x.shape[-2] + 2 * _pair(m.padding)[0] - _pair(m.dilation)[0] * (kh - 1) - 1) // _pair(m.stride)[0] + 1
    Wo = (x.shape[-1] + 2 * _pair(m.padding)[1] - _pair(m.dilation)[1] * (kw - 1) - 1) // _pair(m.stride)[1] + 1
    return cols, Ho, Wo


def im2col_fits(m: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether a shared-input convolution runs as im2col + GEMM (plain groups and padding, im2col within bounds)."""
    return m.groups == 1 and not isinstance(m.padding, str) and x.numel() * math.prod(_pair(m.kernel_size)) * 4 <= _UNFOLD_LIMIT


def _shared_input_conv(m: nn.Conv2d, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                       cols_cache: dict | None = None) -> torch.Tensor:
    """Convolution of one shared input with P*C_out filters: im2col once, then one wide GEMM per sample.

    The first layer typically has very few input channels (1 or 3), where the direct convolution kernel
    is far from peak; the GEMM (P*C_out x C_in*k*k) @ (C_in*k*k x H*W) is not. Same values as
    ``F.conv2d`` up to float32 summation order."""
    B = x.shape[0]
    cols, Ho, Wo = shared_im2col(m, x, cols_cache)
    out = torch.matmul(w.reshape(-1, cols.shape[1]), cols)  # (B, P*Cout, L)
    if bias is not None:
        out += bias.view(1, -1, 1)
    return out.view(B, -1, Ho, Wo)


def conv2d(m: nn.Conv2d, v: Value, P: int, weights: dict, cols_cache: dict | None = None) -> Value:
    if m.padding_mode != "zeros":
        raise Unsupported(f"conv padding_mode={m.padding_mode!r}")
    w, w_pert = stacked(m.weight, P, weights)
    b, b_pert = stacked(m.bias, P, weights)
    if not v.batched and not w_pert and not b_pert:
        return Value(m(v.t), False)
    assert w is not None
    bias = b.reshape(-1) if b is not None else None
    if not v.batched and w_pert:  # shared input: one convolution with P*C_out output channels
        # one im2col GEMM with P*C_out rows, also for a single member: the per-member values must not depend on
        # how the members are chunked (a direct conv rounds differently on some CPUs), and the chunks of a call
        # share the im2col (cols_cache)
        if im2col_fits(m, v.t):
            return Value(_shared_input_conv(m, v.t, w, bias, cols_cache), True)
        out = F.conv2d(v.t, w.reshape(-1, *m.weight.shape[1:]), bias, m.stride, m.padding, m.dilation, m.groups)
        return Value(out, True)
    if not v.batched:  # only the bias differs
        out = F.conv2d(v.t, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
        out = lift(out, P)
        return Value(out + bias.view(1, -1, 1, 1), True)  # type: ignore[union-attr]
    # per-member input: a grouped convolution, one group per member (measured no slower than P separate
    # convolutions at small P, and much faster with 2 threads, where each call costs a thread barrier)
    x, w = v.t, w.reshape(-1, *m.weight.shape[1:])
    if x.device.type == "cpu" and x.dim() == 4 and grouped_channels_last():
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    out = F.conv2d(x, w, bias, m.stride, m.padding, m.dilation, m.groups * P)
    return Value(out, True)


#: ``BAFFLE_CONV_LAYOUT`` = ``nchw`` | ``channels_last`` overrides :func:`grouped_channels_last` (benchmarks A/B it)
CONV_LAYOUT_ENV = "BAFFLE_CONV_LAYOUT"


def grouped_channels_last() -> bool:
    """Whether a chunk's grouped (per-member) convolutions run channels-last on the CPU.

    oneDNN's channels-last grouped kernels are the fast ones on an AVX-512 core (lenet_small's conv2 for 11
    members: 1.1 ms against 5.2 ms in NCHW; the whole default-job engine call 1.3x faster;
    benchmarks/conv_layout.py) and the slow ones on an AVX2 core (1.4x slower there). The choice follows the CPU capability, never a timing, so one
    machine always computes the same values; later layers keep the layout (group norm, activations and the
    pooling views accept it; the flatten before a linear layer restores the logical order).
    """
    forced = os.environ.get(CONV_LAYOUT_ENV, "")
    if forced:
        if forced not in ("nchw", "channels_last"):
            raise ValueError(f"{CONV_LAYOUT_ENV} must be 'nchw' or 'channels_last', got {forced!r}")
        return forced == "channels_last"
    return _CAPABILITY_CHANNELS_LAST


_CAPABILITY_CHANNELS_LAST = torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def linear(m: nn.Linear, v: Value, P: int, weights: dict) -> Value:
    if v.t.dim() != 2:
        raise Unsupported("Linear on inputs with more than 2 dimensions")
    w, w_pert = stacked(m.weight, P, weights)  # (P, O, F)
    b, b_pert = stacked(m.bias, P, weights)  # (P, O)
    if not v.batched and not w_pert and not b_pert:
        return Value(m(v.t), False)
    assert w is not None
    O, Fin = m.weight.shape
    B = v.t.shape[0]
    if not v.batched:  # shared input: one GEMM with P*O outputs
        out = v.t @ w.reshape(P * O, Fin).t()
    else:
        h = v.t.view(B, P, Fin).transpose(0, 1)  # (P, B, F)
        out = torch.bmm(h, w.transpose(1, 2)).transpose(0, 1).reshape(B, P * O)
    if b is not None:
        out = out + b.reshape(1, P * O)
    return Value(out, True)


def group_norm(m: nn.GroupNorm, v: Value, P: int, weights: dict) -> Value:
    w, w_pert = stacked(m.weight, P, weights)
    b, b_pert = stacked(m.bias, P, weights)
    if not v.batched and not w_pert and not b_pert:
        return Value(m(v.t), False)
    t = v.t if v.batched else lift(v.t, P)
    out = F.group_norm(t, m.num_groups * P, None, None, m.eps)
    return Value(_affine(out, w, b), True)


def batch_norm(m: nn.modules.batchnorm._BatchNorm, v: Value, P: int, weights: dict) -> Value:
    if m.training and m.track_running_stats and m.running_mean is not None:
        raise Unsupported("BatchNorm updating running statistics in training mode")
    w, w_pert = stacked(m.weight, P, weights)
    b, b_pert = stacked(m.bias, P, weights)
    if not v.batched and not w_pert and not b_pert:
        return Value(m(v.t), False)
    t = v.t if v.batched else lift(v.t, P)
    if m.running_mean is None:
        out = F.batch_norm(t, None, None, None, None, True, 0.0, m.eps)
    else:  # eval mode with running statistics: a fixed per-channel affine map
        rm, rv = m.running_mean.repeat(P), m.running_var.repeat(P)  # type: ignore[union-attr]
        out = F.batch_norm(t, rm, rv, None, None, False, 0.0, m.eps)
    return Value(_affine(out, w, b), True)


def _affine(out: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
    """The per-member affine map, in place on the norm's fresh output (the same two roundings as out * w + b)."""
    shape = (1, -1) + (1,) * (out.dim() - 2)
    if w is not None:
        out.mul_(w.reshape(shape))
    if b is not None:
        out.add_(b.reshape(shape))
    return out

