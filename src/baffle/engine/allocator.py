"""Keep the memory an engine call frees mapped for the next call (glibc's ``M_TOP_PAD``).

Why: a batched engine call allocates and frees the same tens of MB of activations every time. glibc hands the
top of its heap back to the kernel as soon as it is free, so the next call faults every page in again (and the
kernel zeroes it): the CIFAR models' client calls ran 1.5-1.7x slower that way, the default job's the same
(``benchmarks/allocator.py``, docs/performance.md). Retaining up to ``BAFFLE_MALLOC_TOP_PAD_MB`` (default 64; 512
did no better) of freed heap removes that; the peak is unchanged (the pages are touched either way), the process
just keeps up to that much of its high-water mark between calls, as jemalloc or tcmalloc would.
``BAFFLE_MALLOC_TOP_PAD_MB=0`` leaves glibc's setting alone; on other C libraries this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "BAFFLE_MALLOC_TOP_PAD_MB"
DEFAULT_MB = 64
_M_TOP_PAD = -2  # glibc's mallopt parameter number
_done: str | None = None


def retain_freed_memory() -> str:
    """Sets glibc's top pad once per process (idempotent); returns one line saying what was done."""
    global _done
    if _done is not None:
        return _done
    raw = os.environ.get(ENV, str(DEFAULT_MB))
    try:
        mb = int(raw)
        if mb < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{ENV} must be a whole number of MiB >= 0, got {raw!r}") from None
    if mb == 0:
        _done = f"glibc's default (disabled by {ENV}=0)"
        return _done
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None) if libc is not None and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        mallopt = None
    if mallopt is None:
        _done = "not glibc: the C library's default"
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_TOP_PAD, mb << 20) == 1
    _done = f"freed heap kept up to {mb} MiB (M_TOP_PAD)" if ok else "glibc refused M_TOP_PAD: its default"
    return _done
