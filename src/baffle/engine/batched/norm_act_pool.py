"""GroupNorm -> activation -> 2x2 max-pool as one compiled pass (``norm_act_pool.c``), loaded with ctypes; and the
same pass with the shared-input convolution before it fused in.

Why: in the default job's batched forward these three ops cost a quarter of a client step (docs/performance.md,
"one-core ceiling"): each streams the chunk's widest tensor from memory again, while the convolutions are near
the core's peak. The kernel reads each (sample, group) block once from memory and writes only the pooled
quarter. The first layer's convolution (one or three input channels, a short im2col GEMM) was itself bound by
writing that full-resolution tensor; fused in, each member's output for one sample is made in L1 and consumed
there. Why ctypes: a foreign call releases the GIL, so chunk workers run it on real threads.

Optional, like the noise kernel: ``pip install -e .`` builds it where a C compiler exists; without it, or with
``BAFFLE_FUSED_KERNEL=0``, or for tensors it does not cover (not float32 CPU, pooling other than 2x2), the
program runs the three torch ops. ``status()`` says which runs and why.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import nn

from baffle.protocol.native import load_kernel

ABI = 2  # NAP_ABI in norm_act_pool.c
ACTIVATIONS: dict[type[nn.Module], int] = {nn.Identity: 0, nn.ReLU: 1, nn.Hardswish: 2}

_HERE = Path(__file__).resolve().parent
_lib: ctypes.CDLL | None = None
_why = ""


def _load() -> None:
    global _lib, _why
    lib, _why = load_kernel(_HERE, "_norm_act_pool", "BAFFLE_FUSED_KERNEL", "baffle_nap_abi", ABI, "norm_act_pool.c")
    if lib is None:
        return
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.baffle_gn_act_pool2.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_float, ctypes.c_int]
    lib.baffle_gn_act_pool2.restype = ctypes.c_int
    lib.baffle_conv_gn_act_pool2.argtypes = [ptr] * 6 + [i64] * 8 + [ctypes.c_float, ctypes.c_int]
    lib.baffle_conv_gn_act_pool2.restype = ctypes.c_int
    _lib = lib


_load()


def available() -> bool:
    return _lib is not None


def status() -> str:
    """One line: whether GroupNorm -> activation -> 2x2 max-pool runs fused in this process, and why (not)."""
    return _why if _lib is not None else f"torch ops (kernel {_why})"


def covers(t: torch.Tensor) -> bool:
    """Whether the kernel can take this (N, C, H, W) input."""
    return _lib is not None and t.dim() == 4 and t.dtype == torch.float32 and t.device.type == "cpu" and t.shape[-2] >= 2 and t.shape[-1] >= 2


def _vector(p: torch.Tensor | None, C: int) -> torch.Tensor | None:
    if p is None:
        return None
    v = p.detach().reshape(-1).to(torch.float32).contiguous()
    if v.numel() != C:
        raise ValueError(f"affine parameter of {v.numel()} values for {C} channels")
    return v


def gn_act_pool2(t: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, act: int) -> torch.Tensor:
    """``max_pool2d(act(group_norm(t, groups, weight, bias, eps)), 2)`` in one pass; ``weight``/``bias``: C values
    or None; ``act``: a value of ``ACTIVATIONS``. The caller checks ``covers(t)``."""
    if _lib is None:
        raise RuntimeError(f"the fused kernel is not available: {_why}")
    N, C, H, W = t.shape
    if C % groups:
        raise ValueError(f"{C} channels do not split into {groups} groups")
    x = t.contiguous()
    w, b = _vector(weight, C), _vector(bias, C)
    out = torch.empty(N, C, H // 2, W // 2, dtype=torch.float32)
    rc = _lib.baffle_gn_act_pool2(x.data_ptr(), w.data_ptr() if w is not None else None, b.data_ptr() if b is not None else None,
                                  out.data_ptr(), N, C, groups, H, W, float(eps), int(act))
    if rc != 0:
        raise MemoryError("norm_act_pool: out of memory for one group's buffer")
    return out


def conv_gn_act_pool2(cols: torch.Tensor, H: int, W: int, members: int, weight: torch.Tensor, conv_bias: torch.Tensor | None,
                      groups: int, gn_weight: torch.Tensor | None, gn_bias: torch.Tensor | None, eps: float, act: int) -> torch.Tensor:
    """``gn_act_pool2`` of a shared-input convolution with per-member filters, without its full-resolution output.

    ``cols``: (N, K, >= H*W), the input's im2col matrix (``F.unfold``), shared by every member; only the first H*W
    values of a row are read, so rows may be padded: to a multiple of 8 values (``kernels.shared_im2col(aligned=True)``)
    is the fast layout. ``weight``: (members, C1, K) or (members*C1, K) filters; ``conv_bias``: members*C1 values or
    None; ``groups`` over the members*C1 channels, a whole number per member. Returns (N, members*C1, H//2, W//2).
    Each output is summed in a fixed order of fused multiply-adds, so a member's values do not depend on the other
    members of the call."""
    if _lib is None:
        raise RuntimeError(f"the fused kernel is not available: {_why}")
    N, K, ldc = cols.shape
    if ldc < H * W:
        raise ValueError(f"im2col of {ldc} positions for a {H}x{W} map")
    w = weight.detach().reshape(-1, K).to(torch.float32).contiguous()
    M = w.shape[0]
    if M % members or M % groups or groups % members:
        raise ValueError(f"{M} channels of {members} members do not split into {groups} groups, a whole number per member")
    x = cols.to(torch.float32).contiguous()
    cb, gw, gb = _vector(conv_bias, M), _vector(gn_weight, M), _vector(gn_bias, M)
    ptr = lambda v: v.data_ptr() if v is not None else None  # noqa: E731
    out = torch.empty(N, M, H // 2, W // 2, dtype=torch.float32)
    rc = _lib.baffle_conv_gn_act_pool2(x.data_ptr(), w.data_ptr(), ptr(cb), ptr(gw), ptr(gb), out.data_ptr(),
                                       N, members, M // members, K, ldc, groups, H, W, float(eps), int(act))
    if rc != 0:
        raise MemoryError("norm_act_pool: out of memory for one member's convolution buffer")
    return out

