"""Where the scripts in benchmarks/, experiments/ and scripts/ keep what they measure, and how they write it.

One convention (docs/experiments.md, "Where results live"), so a reader finds every number's source file:

- raw numbers a script measures (JSON): ``results_dir(__file__)``, i.e. ``benchmarks/results/`` for the
  scripts in benchmarks/ and ``experiments/results/`` for those in experiments/, committed;
- Markdown pages generated from them, and the files those pages link to, live in docs/ (``docs/results/``,
  ``docs/flower/``), because the docs link them by relative path;
- working run directories (``baffle run``/``baffle sweep`` outputs) go to ``runs/`` and ``results/<sweep>/``,
  which git ignores.

Every file goes through `write_json`/`write_text`, which write atomically (`atomic_write_bytes`): a benchmark
killed mid-write, or two parts of a sweep writing side by side, never leave a torn file that the next resume
would fail to parse.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from baffle.records.checkpoint import atomic_write_bytes

T = TypeVar("T")


def results_dir(script: str | Path) -> Path:
    """The results folder of a script: ``results/`` beside it (pass ``__file__``)."""
    return Path(script).resolve().parent / "results"


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any, indent: int = 1) -> None:
    """Write `data` as indented JSON plus a final newline, atomically (the format of every committed result)."""
    write_text(path, json.dumps(data, indent=indent) + "\n")


def write_section(path: str | Path, begin: str, end: str, section: str, title: str = "# Performance\n") -> None:
    """Replace a script's own marked section of a shared page (``section`` starts with ``begin`` and ends with
    ``end``), or append it the first time; the rest of the page, other scripts' sections included, is kept."""
    path = Path(path)
    text = path.read_text() if path.exists() else title
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text(path, text)


def best_time(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Best wall time of ``fn`` over ``reps`` calls after ``warmup`` untimed ones: on a shared machine the least
    disturbed call is the closest to what the code costs (the benchmarks record the load beside it)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def step_peak(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(``fn()``, resident MiB before it, peak resident MiB during it): the memory benchmarks' one measurement
    (Linux). Garbage is collected first and the kernel's peak counter reset right before the call
    (``/proc/self/clear_refs`` = 5), so the peak is this call's, on top of what the process already held."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    out = fn()
    return out, before / 1024, _status_kib("VmHWM") / 1024
