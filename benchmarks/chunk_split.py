"""How the batched engine splits a call's perturbed members into chunks: equal chunks against "full chunks
and a remainder", on the default job's fused client call, with one and with two chunk workers.

    .venv/bin/python benchmarks/chunk_split.py [--calls 40] [--most 4] [--out benchmarks/results/chunk_split.json]

Why: the default job's 21 members (K=20 forward differences) at most 4 per chunk used to run as 4+4+4+4+4+1; with two
chunk workers (the automatic thread policy on a 2-core machine) the last chunk decides when the call ends, and a
one-member chunk pays every per-call cost for a sixth of the work. ``chunk_spans`` now splits 4+4+4+3+3+3. Both rules
are timed in ONE process, alternated call by call (medians after 5 warm-up calls), and the losses of both are hashed:
the split must not change a value. ``--most`` caps the members per chunk (default 4, the planner's choice for this job
until 2026-12-05; today's planner gives 11 + 10, where the two rules agree). Writes benchmarks/results/chunk_split.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # ceiling.py: the default job's fused call

import baffle.engine.batched.engine as batched  # noqa: E402
from baffle.engine.batched.planner import Budget  # noqa: E402
from baffle.records.results import results_dir, write_json  # noqa: E402
from ceiling import default_config, fused_client_call  # noqa: E402

OUT = results_dir(__file__) / "chunk_split.json"
WARMUP = 5


def remainder_spans(total: int, most: int, unit: int = 1) -> list[tuple[int, int]]:
    """The rule before 2026-12-04: full chunks, then whatever is left."""
    step = max(unit, most - most % unit)
    return [(a, min(a + step, total)) for a in range(0, total, step)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--most", type=int, default=4, help="members per chunk at most (default 4: what the planner chose "
                    "for this job until 2026-12-05; since then it gives 11 + 10, where the two rules agree)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.calls < 1:
        ap.error(f"--calls must be >= 1, got {args.calls}")
    if args.most < 1:
        ap.error(f"--most must be >= 1, got {args.most}")
    torch.set_num_threads(1)
    cfg = default_config([])
    _, key, _, call = fused_client_call(cfg)
    engine = key.engine
    if not isinstance(engine, batched.BatchedEngine):
        raise SystemExit(f"the default job's engine is {type(engine).__name__}, not the batched engine this measures")
    engine.budget = Budget(engine.budget.max_memory_mb, args.most, engine.budget.cache_bytes)
    rules = {"equal (chunk_spans)": batched.chunk_spans, "remainder": remainder_spans}
    rows = []
    try:
        for workers in (1, 2):
            engine.workers = workers
            times: dict[str, list[float]] = {name: [] for name in rules}
            digest: dict[str, str] = {}
            for _ in range(WARMUP + args.calls):
                for name, rule in rules.items():
                    batched.chunk_spans = rule
                    t0 = time.perf_counter()
                    out = call()
                    times[name].append(time.perf_counter() - t0)
                    digest[name] = hashlib.sha256(np.concatenate(out).tobytes()).hexdigest()[:12]
            for name in rules:
                spans = rules[name](cfg.estimator.K + 1, engine.last_chunk)
                rows.append({"workers": workers, "rule": name, "chunks": [b - a for a, b in spans],
                             "median_ms": 1e3 * statistics.median(times[name][WARMUP:]),
                             "best_ms": 1e3 * min(times[name][WARMUP:]), "losses_sha256": digest[name]})
    finally:
        batched.chunk_spans = rules["equal (chunk_spans)"]
    print(f"{'workers':>7} {'rule':20} {'chunks':22} {'median ms':>9} {'best ms':>8}  losses")
    for r in rows:
        print(f"{r['workers']:>7} {r['rule']:20} {'+'.join(map(str, r['chunks'])):22} {r['median_ms']:9.1f} {r['best_ms']:8.1f}  {r['losses_sha256']}")
    for w in (1, 2):
        eq, rem = [r for r in rows if r["workers"] == w]
        print(f"workers {w}: equal chunks take {eq['median_ms'] / rem['median_ms']:.3f}x the remainder rule's time; "
              f"losses {'identical' if eq['losses_sha256'] == rem['losses_sha256'] else 'DIFFERENT'}")
    write_json(args.out, {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_average": os.getloadavg(),
                     "job": "default Config(): lenet_small mnist 14x14, K=20, batch 32, 10 clients fused",
                     "calls": args.calls, "most_per_chunk": args.most, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
