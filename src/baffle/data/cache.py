"""Where parsed datasets are cached, and how: .npz files in the user's cache directory.

Parsing a source (a 60k-line CSV, thousands of JPEGs) is slow and its result is a few plain uint8 arrays,
so it is done once and the arrays are kept as an .npz keyed by what was parsed: a changed source gets a
new key and is re-read. Writes are atomic, so a reader never sees a half-written cache, and an unreadable
cache is re-parsed rather than trusted.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

# Version of the on-disk parse cache layout; bump it to invalidate every cached .npz.
CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Directory for parsed-dataset caches: ``$BAFFLE_CACHE`` or ``~/.cache/baffle``.

    Read at call time (not import time) so tests and users can redirect it per process.
    """
    env = os.environ.get("BAFFLE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "baffle"


def file_signature(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), int(st.st_size), int(st.st_mtime_ns))


def atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz so a reader never sees a half-written file (tmp in same dir + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache should be as readable as any file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def cached_arrays(target: Path, build: Callable[[], dict[str, np.ndarray]], stale_glob: str | None = None) -> dict[str, np.ndarray]:
    """The arrays cached at ``target``, or ``build()``'s, saved there for next time.

    ``stale_glob`` names caches of older versions of the same source (same directory): they are removed
    once the new one is written. A cache that cannot be read or written only costs a warning.
    """
    if target.is_file():
        try:
            with np.load(target, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:  # corrupt/truncated cache: re-parse and overwrite
            warnings.warn(f"ignoring unreadable cache {target}: {exc}", stacklevel=3)
    arrays = build()
    try:
        atomic_savez(target, **arrays)
        if stale_glob is not None:
            for stale in target.parent.glob(stale_glob):
                if stale != target:
                    stale.unlink(missing_ok=True)
    except OSError as exc:
        warnings.warn(f"could not write dataset cache {target}: {exc}", stacklevel=3)
    return arrays
