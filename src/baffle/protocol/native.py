"""Loading baffle's optional compiled kernels (the noise spec v2 kernel, the fused norm/activation/pool).

It lives in ``protocol`` because the noise kernel does (``protocol`` imports nothing else of baffle) and it needs
nothing but ctypes. Why one loader: both kernels are built by ``pip install -e .`` only where a C compiler exists,
can be switched off by an environment variable, and must not be used when the library on disk was built from
another version of its C source (each exports an ABI number). Callers get the library, or None and a one-line reason that their
``status()`` shows.
"""

from __future__ import annotations

import ctypes
import os
from importlib import machinery
from pathlib import Path


def load_kernel(folder: Path, stem: str, env: str, abi_symbol: str, abi: int, source: str) -> tuple[ctypes.CDLL | None, str]:
    """(library, why) for the extension ``stem`` built into ``folder``; ``env``=0 disables it."""
    if os.environ.get(env, "1") == "0":
        return None, f"disabled by {env}=0"
    path = next((p for s in machinery.EXTENSION_SUFFIXES if (p := folder / f"{stem}{s}").is_file()), None)
    if path is None:
        return None, "not built (no C compiler when baffle was installed); re-run scripts/setup.sh to build it"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return None, f"{path.name} does not load ({e})"
    getattr(lib, abi_symbol).restype = ctypes.c_int
    if getattr(lib, abi_symbol)() != abi:
        return None, f"{path.name} was built from another version of {source}; re-run scripts/setup.sh"
    return lib, f"compiled kernel {path.name}"
