"""The fused GroupNorm -> activation -> 2x2 max-pool kernel against the three torch ops, on the default job.

    .venv/bin/python benchmarks/norm_act_pool.py            # ~4 minutes on one thread; JSON + docs section
    .venv/bin/python benchmarks/norm_act_pool.py --quick    # a few seconds, JSON to a temp file, docs untouched

Why: the kernel (src/baffle/engine/batched/norm_act_pool.c) exists to make the default job's client step
cheaper; this measures by how much, where it matters. Both variants run in ONE process, alternated block by
block (the kernel is switched off by hiding it from the program, as a machine without a C compiler runs), on
one torch thread:

1. each chain on the exact tensor the default job's fused client call feeds it (shapes captured from one call);
2. the whole fused client call (``multi_client`` over every client's minibatch, as benchmarks/ceiling.py times it);
3. the whole default job for 300 rounds (rounds and evaluations; benchmarks/ceiling.py's end to end), three runs
   of each variant, alternated.

Each block is the best of ``--reps`` calls; the table gives the median over ``--blocks`` blocks of each variant
and their ratio. On a shared or virtualised machine single calls vary by tens of percent: read the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from baffle.engine.batched import norm_act_pool as nap  # noqa: E402
from baffle.records.results import best_time, results_dir, write_json, write_section  # noqa: E402
from baffle.records.tables import markdown_table  # noqa: E402

OUT = results_dir(__file__) / "norm_act_pool.json"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- norm_act_pool:begin -->", "<!-- norm_act_pool:end -->"


def alternate(variants: dict, blocks: int, reps: int) -> dict[str, float]:
    """Median over ``blocks`` of the best of ``reps`` calls, each variant's blocks interleaved with the others'."""
    bests: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(blocks):
        for name, (setup, fn) in variants.items():
            setup()
            bests[name].append(best_time(fn, reps, warmup=1))
    return {k: statistics.median(v) for k, v in bests.items()}


def measure(blocks: int, reps: int, e2e_runs: int = 3, e2e_rounds: int = 300) -> dict:
    import ceiling  # the default job's fused client call, as the ceiling benchmark builds it

    if not nap.available():
        raise SystemExit(f"norm_act_pool.py: the fused kernel is not available ({nap.status()}); nothing to compare")
    torch.set_num_threads(1)
    lib = nap._lib
    use = {"torch ops": lambda: setattr(nap, "_lib", None), "fused kernel": lambda: setattr(nap, "_lib", lib)}
    cfg = ceiling.default_config([])
    fed, key, batches, call = ceiling.fused_client_call(cfg)
    shapes: list[tuple[tuple[int, ...], int, int]] = []
    real = nap.gn_act_pool2

    def capture(t, groups, w, b, eps, act):
        if (tuple(t.shape), groups, act) not in shapes:
            shapes.append((tuple(t.shape), groups, act))
        return real(t, groups, w, b, eps, act)

    nap.gn_act_pool2 = capture
    try:
        got = call()
    finally:
        nap.gn_act_pool2 = real
    use["torch ops"]()
    ref = call()
    use["fused kernel"]()
    rel = max(float(abs(a - b).max() / max(abs(a).max(), 1e-30)) for a, b in zip(ref, got))

    import torch.nn.functional as F

    from baffle.engine.batched.kernels import tiling_max_pool2d

    acts = {0: lambda t: t, 1: lambda t: F.relu(t, inplace=True), 2: lambda t: F.hardswish(t, inplace=True)}
    rows = []
    for shape, groups, act in shapes:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        ops = lambda: tiling_max_pool2d(acts[act](F.group_norm(x, groups, None, None, 1e-5)), 2)  # noqa: E731
        fused = lambda: real(x, groups, None, None, 1e-5, act)  # noqa: E731
        t = alternate({"torch ops": (use["torch ops"], ops), "fused kernel": (use["fused kernel"], fused)}, blocks, reps)
        rows.append({"what": f"chain on {tuple(shape)}, {groups} groups", "torch_s": t["torch ops"], "fused_s": t["fused kernel"]})
    t = alternate({"torch ops": (use["torch ops"], call), "fused kernel": (use["fused kernel"], call)}, blocks, max(3, reps // 3))
    use["fused kernel"]()
    rows.append({"what": f"default job's fused client call ({len(batches)} clients, K={cfg.estimator.K}, chunks of {key.engine.last_chunk})",
                 "torch_s": t["torch ops"], "fused_s": t["fused kernel"]})
    # the whole job: rounds and evaluations, no run directory (as benchmarks/ceiling.py's end-to-end), alternated
    e2e: dict[str, list[float]] = {"torch ops": [], "fused kernel": []}
    for _ in range(e2e_runs):
        for name in e2e:
            use[name]()
            e2e[name].append(ceiling.end_to_end(e2e_rounds, [])["run_s"])
    use["fused kernel"]()
    if e2e_runs:
        rows.append({"what": f"default job end to end, {e2e_rounds} rounds (median of {e2e_runs} alternated runs)",
                     "torch_s": statistics.median(e2e["torch ops"]), "fused_s": statistics.median(e2e["fused kernel"])})
    return {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "loadavg": os.getloadavg(), "blocks": blocks,
            "reps": reps, "max_rel_diff_of_loss_differences": rel, "rows": rows}


def section(res: dict) -> str:
    table = [[r["what"], f"{1e3 * r['torch_s']:.2f}", f"{1e3 * r['fused_s']:.2f}", f"{r['torch_s'] / r['fused_s']:.2f}x"] for r in res["rows"]]
    return "\n".join([
        BEGIN, "## Fused GroupNorm -> activation -> max-pool", "",
        f"Generated by `.venv/bin/python benchmarks/norm_act_pool.py` (raw: `benchmarks/results/norm_act_pool.json`), "
        f"{res['when']}, torch {res['torch']} (CPU capability {res['cpu_capability']}), one thread, load average "
        f"{res['loadavg'][0]:.1f} at the end. Each time: median over {res['blocks']} blocks of the best of a block's calls, "
        "the two variants alternated block by block in one process. The kernel (`src/baffle/engine/batched/norm_act_pool.c`, "
        "built by `pip install -e .`, `BAFFLE_FUSED_KERNEL=0` turns it off) runs every GroupNorm -> ReLU/Hardswish/Identity "
        "-> 2x2 max-pool chain of the batched engine in one pass; the client's K loss differences agree with the torch "
        f"ops' to {res['max_rel_diff_of_loss_differences']:.1e} of their largest entry (float32 rounding of the norm's sums).", "",
        markdown_table(["what", "torch ops ms", "fused kernel ms", "speed-up"], table, ["left", "right", "right", "right"]),
        "", END, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few blocks, JSON to a temp file, docs untouched")
    args = ap.parse_args()
    blocks, reps, e2e_runs = (2, 3, 1) if args.quick else (8, 12, 3)
    res = measure(blocks, reps, e2e_runs, 20 if args.quick else 300)
    out = Path(tempfile.gettempdir()) / "norm_act_pool_quick.json" if args.quick else OUT
    write_json(out, res)
    for r in res["rows"]:
        print(f"{r['what']}: torch ops {1e3 * r['torch_s']:.2f} ms, fused {1e3 * r['fused_s']:.2f} ms, {r['torch_s'] / r['fused_s']:.2f}x")
    if not args.quick:
        write_section(DOC, BEGIN, END, section(res))
    print(f"wrote {out}" + ("" if args.quick else f" and the {BEGIN} section of {DOC}"))


if __name__ == "__main__":
    main()
