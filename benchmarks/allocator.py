"""glibc's top pad (``baffle.engine.allocator``) on and off: batched engine calls, in fresh processes, alternated.

    .venv/bin/python benchmarks/allocator.py [--pairs 3]    # ~3 minutes; JSON + docs/performance.md section

Why: ``BatchedEngine`` sets ``M_TOP_PAD`` so that the memory one call frees stays mapped for the next; without it
glibc returns the heap's top to the kernel and every call faults its activations in again. The setting is per
process, so each measurement is a fresh process (``BAFFLE_MALLOC_TOP_PAD_MB=0``: glibc's default; unset: the
engine's 64 MiB), the two alternated ``--pairs`` times. A child builds the engine call, warms up with 2 calls and
reports the median of 7 (one torch thread) and its peak RSS. Workloads: the default job's fused client call
(benchmarks/ceiling.py) and one client's call on the CIFAR models at batch 32 and 64 (random images; K=20).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from baffle.records.results import results_dir, write_json, write_section  # noqa: E402
from baffle.records.tables import markdown_table  # noqa: E402

OUT = results_dir(__file__) / "allocator.json"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- allocator:begin -->", "<!-- allocator:end -->"
WORKLOADS = ("default job, fused client call", "cnn_cifar_small, batch 32", "cnn_cifar_small, batch 64", "wrn10_2, batch 32")


def child(workload: str) -> None:
    import torch

    torch.set_num_threads(1)
    if workload.startswith("default"):
        import ceiling

        _, key, _, call = ceiling.fused_client_call(ceiling.default_config([]))
        engine = key.engine
    else:
        from baffle import estimator
        from baffle.engine.batched.engine import BatchedEngine
        from baffle.models import build_model
        from baffle.protocol import noise

        name, batch = workload.split(", batch ")
        model = build_model(name, in_channels=3, num_classes=10, image_size=32)
        params = estimator.select_parameters(model)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(int(batch), 3, 32, 32, generator=g), torch.randint(0, 10, (int(batch),), generator=g)
        seeds = noise.round_seeds(0, 0, 20)
        engine = BatchedEngine()
        call = lambda: engine(model, params, x, y, seeds, 1e-3, noise="v2-gauss")  # noqa: E731
    from baffle.engine.allocator import retain_freed_memory

    for _ in range(2):
        call()
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"median_s": statistics.median(times), "chunk": engine.last_chunk, "peak_rss_mib": hwm / 1024,
                      "allocator": retain_freed_memory()}))


def run_child(workload: str, pad: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("BAFFLE_MALLOC_TOP_PAD_MB", None)
    if not pad:
        env["BAFFLE_MALLOC_TOP_PAD_MB"] = "0"
    out = subprocess.run([sys.executable, __file__, "--child", workload], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    rows = []
    for w in WORKLOADS:
        got: dict[bool, list[dict]] = {False: [], True: []}
        for _ in range(args.pairs):
            for pad in (False, True):
                got[pad].append(run_child(w, pad))
        off, on = (statistics.median(r["median_s"] for r in got[p]) for p in (False, True))
        rows.append({"workload": w, "chunk": got[True][0]["chunk"], "off_s": off, "on_s": on,
                     "off_peak_mib": max(r["peak_rss_mib"] for r in got[False]), "on_peak_mib": max(r["peak_rss_mib"] for r in got[True]),
                     "allocator": got[True][0]["allocator"]})
        print(f"{w}: glibc default {1e3 * off:.1f} ms, top pad {1e3 * on:.1f} ms, {off / on:.2f}x", flush=True)
    res = {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "pairs": args.pairs, "loadavg": os.getloadavg(), "rows": rows}
    write_json(OUT, res)
    table = [[r["workload"], str(r["chunk"]), f"{1e3 * r['off_s']:.1f}", f"{1e3 * r['on_s']:.1f}", f"{r['off_s'] / r['on_s']:.2f}x",
              f"{r['off_peak_mib']:.0f} / {r['on_peak_mib']:.0f}"] for r in rows]
    write_section(DOC, BEGIN, END, "\n".join([
        BEGIN, "## Keeping freed memory mapped between engine calls", "",
        f"Generated by `.venv/bin/python benchmarks/allocator.py` (raw: `benchmarks/results/allocator.json`), {res['when']}, one "
        f"torch thread, load average {res['loadavg'][0]:.1f} at the end. `BatchedEngine` sets glibc's `M_TOP_PAD` to 64 MiB "
        "(`src/baffle/engine/allocator.py`; `BAFFLE_MALLOC_TOP_PAD_MB=0` leaves glibc's default), so the tensors a call "
        "frees are not handed back to the kernel and faulted in again by the next call. Each number: a fresh process, "
        f"median of 7 calls after 2 warm-ups; the median over {args.pairs} such processes per setting, the settings "
        "alternated. `chunk`: members per chunk.", "",
        markdown_table(["engine call", "chunk", "glibc default ms", "top pad ms", "speed-up", "peak RSS MiB (default / pad)"],
                       table, ["left", "right", "right", "right", "right", "right"]), "", END, ""]))
    print(f"wrote {OUT} and the {BEGIN} section of {DOC}")


if __name__ == "__main__":
    main()
