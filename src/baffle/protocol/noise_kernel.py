"""The compiled one-pass kernel of noise spec v2 (``noise_kernel.c``), loaded with ctypes when it was built.

Why compiled: numpy makes about ten passes over memory per block of directions (one per ufunc) and tops out
at 1.3 G elements/s (Rademacher) and 0.66 G/s (Gaussian) on one core; the kernel writes each element once.
Why ctypes: a foreign call releases the GIL, so the server's reconstruction runs its blocks on real threads.

The kernel is optional. ``pip install -e .`` builds it (setup.py) where a C compiler exists; otherwise, or when
``BAFFLE_NOISE_KERNEL=0`` is set, or when the built library is from another version of the C source (ABI
number), baffle uses the numpy code in ``noise.py``, which is the reference the kernel is tested against bit
for bit (tests/protocol/test_noise_kernel.py). ``status()`` says which one runs and why.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from baffle.protocol.native import load_kernel

ABI = 1  # BAFFLE_KERNEL_ABI in noise_kernel.c: a library built from an older source is not used

_HERE = Path(__file__).resolve().parent
_lib: ctypes.CDLL | None = None
_why = ""


def _load() -> None:
    global _lib, _why
    lib, _why = load_kernel(_HERE, "_noise_kernel", "BAFFLE_NOISE_KERNEL", "baffle_kernel_abi", ABI, "noise_kernel.c")
    if lib is None:
        return
    u64, i64, f32, ptr = ctypes.c_uint64, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.baffle_v2_rademacher.argtypes = [u64, u64, i64, f32, ptr]
    lib.baffle_v2_gauss.argtypes = [u64, u64, i64, ctypes.c_int, f32, ptr]
    lib.baffle_v2_accumulate.argtypes = [ctypes.c_int, ptr, ptr, i64, u64, i64, ptr]
    for f in (lib.baffle_v2_rademacher, lib.baffle_v2_gauss, lib.baffle_v2_accumulate):
        f.restype = None
    _lib = lib


_load()


def available() -> bool:
    return _lib is not None


def status() -> str:
    """One line: which implementation generates v2 directions in this process, and why."""
    return _why if _lib is not None else f"numpy (kernel {_why})"


def _check_out(out: np.ndarray) -> None:
    if out.dtype != np.float32 or out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be a writeable, contiguous 1-D float32 array")


def fill(seed: int, offset: int, out: np.ndarray, kind: str, scale: float | None) -> None:
    """out := elements [offset, offset + len(out)) of direction(seed, kind) [times float32(scale)]."""
    assert _lib is not None, "noise kernel not loaded"
    _check_out(out)
    n, p = len(out), out.ctypes.data
    if kind == "v2-rademacher":
        _lib.baffle_v2_rademacher(seed & (2**64 - 1), offset, n, 1.0 if scale is None else scale, p)
    elif kind == "v2-gauss":
        _lib.baffle_v2_gauss(seed & (2**64 - 1), offset, n, int(scale is not None), 0.0 if scale is None else scale, p)
    else:
        raise ValueError(f"the kernel generates the v2 kinds, not {kind!r}")


def accumulate(coef: np.ndarray, seeds: np.ndarray, kind: str, offset: int, out: np.ndarray) -> None:
    """out := sum_k float32(coef[k] * eps_k[offset : offset + len(out)]), added in seed order from +0.0."""
    assert _lib is not None, "noise kernel not loaded"
    _check_out(out)
    coef = np.ascontiguousarray(coef, dtype=np.float32)
    seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
    if coef.shape != seeds.shape or coef.ndim != 1:
        raise ValueError(f"coef and seeds must be 1-D of one length, got {coef.shape} and {seeds.shape}")
    if kind not in ("v2-rademacher", "v2-gauss"):
        raise ValueError(f"the kernel generates the v2 kinds, not {kind!r}")
    _lib.baffle_v2_accumulate(int(kind == "v2-gauss"), seeds.ctypes.data, coef.ctypes.data, len(seeds), offset,
                              len(out), out.ctypes.data)
