"""Server reconstruction time and peak memory at real model sizes, per noise kind.

    .venv/bin/python benchmarks/reconstruct_speed.py             # n in {5e3, 3e5, 3e6, 2.27e7}, K in {20, 100}
    .venv/bin/python benchmarks/reconstruct_speed.py --doc-only  # rewrite the docs section from the saved JSON

Why: reconstruction g = 1/(K sigma) sum_k dL_k eps_k is the server's one model-sized computation; the
original path (kept for v1, whose results are pinned) promotes 32-direction chunks to float64 and took
42 s and 8.3 GiB at n = 22.7M, K = 32 (issue 13). The v2 path (``baffle.reconstruct``) accumulates in
float32 over cache-sized element blocks. Each measurement runs in a fresh subprocess (so one run's
allocations cannot hide another's), one thread, and reports wall time, the peak of Python-traced
allocations (``tracemalloc``: numpy buffers are traced) and the process's peak RSS growth
(``resource.getrusage``), both against the parameter vector's 4n bytes. The float32 accumulation error is
measured against a float64 reference at the sizes where that reference fits (n <= 3e6).
v1 at n = 2.27e7 (about 8 GiB and a minute per K=20 run) is skipped unless ``--v1-big``: the issue's
measurement of it is quoted instead.

Writes benchmarks/results/reconstruct_speed.json and the "Server reconstruction" section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle.records.results import results_dir, write_json, write_section  # noqa: E402

OUT = results_dir(__file__) / "reconstruct_speed.json"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- reconstruct_speed:begin -->", "<!-- reconstruct_speed:end -->"
SIZES = (5_000, 300_000, 3_000_000, 22_700_000)
KS = (20, 100)
KINDS = ("v1", "v2-gauss", "v2-rademacher")
GOAL_SECONDS, GOAL_MEMORY = 1.5, 2.0  # n = 22.7M, K = 20 (issue 13)


def child(n: int, K: int, kind: str, error: bool) -> dict:
    """One measurement, in a fresh process: time, traced peak, RSS growth, float32 error vs float64."""
    import resource
    import time
    import tracemalloc

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from baffle.protocol import noise
    from baffle.reconstruct import reconstruct

    seeds = noise.round_seeds(0, 1, K)
    d = np.random.default_rng(0).standard_normal(K).astype(np.float32)
    reconstruct(d, seeds, 1e-3, min(n, 4096), noise=kind)  # warm-up: imports, constant tables
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    g = reconstruct(d, seeds, 1e-3, n, noise=kind)
    seconds = time.perf_counter() - t0
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    row = {"n": n, "K": K, "kind": kind, "seconds": seconds, "traced_peak_bytes": traced,
           "rss_growth_bytes": max(rss_growth, 0), "param_bytes": 4 * n, "load": os.getloadavg()[0]}
    if error:
        ref = np.zeros(n, dtype=np.float64)
        for s, dk in zip(seeds, d):
            ref += float(dk) * noise.direction(s, n, kind).astype(np.float64)
        ref /= K * 1e-3
        row["max_rel_error"] = float(np.max(np.abs(g - ref)) / np.max(np.abs(ref)))
        row["rms_rel_error"] = float(np.sqrt(np.mean((g - ref) ** 2) / np.mean(ref**2)))
    return row


def measure(sizes: tuple[int, ...], ks: tuple[int, ...], v1_big: bool) -> dict:
    load_start = os.getloadavg()
    rows = []
    for n in sizes:
        for K in ks:
            for kind in KINDS:
                if kind == "v1" and n > 3_000_000 and not v1_big:
                    continue
                error = kind != "v1" and n <= 3_000_000  # v1 is the float64 path already
                cmd = [sys.executable, __file__, "--child", str(n), str(K), kind, "1" if error else "0"]
                env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
                if out.returncode:
                    raise RuntimeError(out.stderr)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                err = f", max rel err {row['max_rel_error']:.1e}" if "max_rel_error" in row else ""
                print(f"n={n} K={K} {kind}: {row['seconds']:.3f} s, traced {row['traced_peak_bytes'] / row['param_bytes']:.2f}x, "
                      f"RSS +{row['rss_growth_bytes'] / row['param_bytes']:.2f}x{err}", flush=True)
    return {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread",
        "load_start": load_start, "load_end": os.getloadavg(), "rows": rows,
    }


def section(res: dict) -> str:
    from baffle.records.tables import markdown_table

    rows = []
    for r in res["rows"]:
        err = f"{r['max_rel_error']:.1e}" if "max_rel_error" in r else "not measured"
        rows.append([f"{r['n']:,}", r["K"], r["kind"], f"{r['seconds']:.3f}", f"{r['traced_peak_bytes'] / r['param_bytes']:.2f}x",
                     f"{r['rss_growth_bytes'] / r['param_bytes']:.2f}x", err, f"{r['load']:.1f}"])
    goals = []
    big = max(r["n"] for r in res["rows"])
    for r in res["rows"]:
        if r["n"] == big and r["K"] == 20 and r["kind"] != "v1":
            mem = max(r["traced_peak_bytes"], r["rss_growth_bytes"]) / r["param_bytes"]
            goals.append([f"{r['kind']}, n={big:,}, K=20", f"{r['seconds']:.2f} s, {mem:.2f}x parameters",
                          f"<= {GOAL_SECONDS} s, <= {GOAL_MEMORY:.0f}x",
                          "yes" if r["seconds"] <= GOAL_SECONDS and mem <= GOAL_MEMORY else "**no**"])
    ls, le = res["load_start"], res["load_end"]
    return "\n".join([
        BEGIN,
        "## Server reconstruction",
        "",
        f"Generated by `.venv/bin/python benchmarks/reconstruct_speed.py` (raw numbers: "
        f"`benchmarks/results/reconstruct_speed.json`), {res['generated']}. {res['machine']}. Load average at "
        f"start / end: {ls[0]:.1f} {ls[1]:.1f} {ls[2]:.1f} / {le[0]:.1f} {le[1]:.1f} {le[2]:.1f} (2 shared cores: times are noisy).",
        "",
        "`baffle.reconstruct.reconstruct`, one fresh process per row. v1 is the original float64 chunked matmul "
        "(kept bit-identical: its results are pinned); v2 accumulates float32 over 64 Ki-element blocks. "
        "`traced` = peak of tracemalloc-traced allocations / parameter bytes (4n); `RSS` = growth of the process's "
        "peak RSS during the call / 4n; `max rel err` = max |g32 - g64| / max |g64| against a float64 reference "
        "(measured up to n = 3M). v1 at n = 22.7M is not rerun here: issue 13 measured 42 s and 8.3 GiB (K = 32).",
        "",
        markdown_table(["n", "K", "kind", "seconds", "traced", "RSS", "max rel err", "load"], rows,
                       ["right", "right", None, "right", "right", "right", "right", "right"]),
        "",
        markdown_table(["goal", "measured", "target", "met"], goals),
        END,
    ])


def write_doc(res: dict) -> None:
    """Replace this script's own section of docs/performance.md (append it the first time)."""
    write_section(DOC, BEGIN, END, section(res))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        n, K, kind, err = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
        print(json.dumps(child(n, K, kind, err)))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--K", type=int, nargs="+", default=list(KS))
    ap.add_argument("--v1-big", action="store_true", help="also run v1 above n = 3e6 (~8 GiB, minutes)")
    ap.add_argument("--doc-only", action="store_true")
    args = ap.parse_args()
    if args.doc_only:
        res = json.loads(OUT.read_text())
    else:
        res = measure(tuple(args.sizes), tuple(args.K), args.v1_big)
        write_json(OUT, res)
    write_doc(res)
    print(f"wrote {OUT.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
