"""GroupNorm -> activation -> 2x2 max-pool as one compiled pass (``norm_act_pool.c``), loaded with ctypes.

Why: in the default job's batched forward these three ops cost a quarter of a client step (docs/performance.md,
"one-core ceiling"): each streams the chunk's widest tensor from memory again, while the convolutions are near
the core's peak. The kernel reads each (sample, group) block once from memory and writes only the pooled
quarter. Why ctypes: a foreign call releases the GIL, so chunk workers run it on real threads.

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

ABI = 1  # NAP_ABI in norm_act_pool.c
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
