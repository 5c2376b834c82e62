"""The fused (convolution ->) GroupNorm -> activation -> 2x2 max-pool kernels against the torch ops, on the default job.

    .venv/bin/python benchmarks/norm_act_pool.py            # ~8 minutes on one thread; JSON + docs section
    .venv/bin/python benchmarks/norm_act_pool.py --quick    # a few seconds, JSON to a temp file, docs untouched

Why: the kernels (src/baffle/engine/batched/norm_act_pool.c) exist to make the default job's client step
cheaper; this measures by how much, where it matters. Every comparison runs in ONE process, the variants
alternated block by block, on one torch thread:

1. each GroupNorm chain on the exact tensor the default job's fused client call feeds it (shapes captured from
   one call), kernel vs the three torch ops; and the first layer's convolution with its chain (the captured
   im2col and filters) as one kernel call vs the im2col GEMM + bias followed by the chain kernel;
2. the whole fused client call (``multi_client`` over every client's minibatch, as benchmarks/ceiling.py times it)
   in four variants, each adding one step: the torch ops (a machine without a C compiler, or
   ``BAFFLE_FUSED_KERNEL=0``); the chain kernel with the convolution apart and the planner counting every
   layer's tensors (the engine before 2026-12-05); the convolution fused in; the planner counting only what the
   passes materialise (today's engine: larger chunks);
3. the whole default job for 300 rounds (rounds and evaluations; benchmarks/ceiling.py's end to end) in the first,
   second and last variants, three runs of each, alternated.

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
    import torch.nn.functional as F

    from baffle.engine.batched import planner
    from baffle.engine.batched.kernels import tiling_max_pool2d
    from baffle.engine.batched.program import Program

    if not nap.available():
        raise SystemExit(f"norm_act_pool.py: the fused kernel is not available ({nap.status()}); nothing to compare")
    torch.set_num_threads(1)
    lib, real, real_conv = nap._lib, nap.gn_act_pool2, nap.conv_gn_act_pool2
    real_passes, real_conv_chain = planner.fused_passes, Program._conv_norm_act_pool
    steps = {  # variant -> (compiled kernel, convolution fused in, planner counts only materialised tensors)
        "torch ops": (False, False, False),
        "chain kernel, convolution apart": (True, False, False),
        "+ convolution fused in": (True, True, False),
        "+ planner counts fused passes": (True, True, True),
    }

    def use(name: str, prog: Program | None = None) -> None:
        kernel, conv, passes = steps[name]
        nap._lib = lib if kernel else None
        Program._conv_norm_act_pool = real_conv_chain if conv else (lambda *a, **k: None)
        planner.fused_passes = real_passes if passes else (lambda prog: (set(), {}))
        if prog is not None:
            prog.activation_cache.clear()  # the planner measures again under this variant's rules

    cfg = ceiling.default_config([])
    fed, key, batches, call = ceiling.fused_client_call(cfg)
    prog = key.engine._program(key.model)
    shapes: list[tuple[tuple[int, ...], int, int]] = []
    convs: list[tuple] = []

    def capture(t, groups, w, b, eps, act):
        if (tuple(t.shape), groups, act) not in shapes:
            shapes.append((tuple(t.shape), groups, act))
        return real(t, groups, w, b, eps, act)

    def capture_conv(cols, H, W, members, w, b, groups, gw, gb, eps, act):
        if not convs:
            convs.append((cols, H, W, members, w.clone(), None if b is None else b.clone(), groups, act))
        return real_conv(cols, H, W, members, w, b, groups, gw, gb, eps, act)

    final = "+ planner counts fused passes"
    use(final, prog)
    nap.gn_act_pool2, nap.conv_gn_act_pool2 = capture, capture_conv
    try:
        got = call()
        chunk = key.engine.last_chunk
    finally:
        nap.gn_act_pool2, nap.conv_gn_act_pool2 = real, real_conv
    use("torch ops", prog)
    ref = call()
    use(final, prog)
    rel = max(float(abs(a - b).max() / max(abs(a).max(), 1e-30)) for a, b in zip(ref, got))

    acts = {0: lambda t: t, 1: lambda t: F.relu(t, inplace=True), 2: lambda t: F.hardswish(t, inplace=True)}
    on = lambda: use(final)  # noqa: E731
    off = lambda: use("torch ops")  # noqa: E731
    kernels = []
    for shape, groups, act in shapes:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        ops = lambda: tiling_max_pool2d(acts[act](F.group_norm(x, groups, None, None, 1e-5)), 2)  # noqa: E731
        fused = lambda: real(x, groups, None, None, 1e-5, act)  # noqa: E731
        t = alternate({"torch ops": (off, ops), "fused kernel": (on, fused)}, blocks, reps)
        kernels.append({"what": f"GroupNorm chain on {tuple(shape)}, {groups} groups", "before": "the three torch ops",
                        "before_s": t["torch ops"], "fused_s": t["fused kernel"]})
    for cols, H, W, members, w, b, groups, act in convs:
        flat = cols[..., : H * W].contiguous()  # the GEMM path's own (unpadded) im2col
        wm = w.reshape(-1, flat.shape[1])

        def gemm_then_chain():
            out = torch.matmul(wm, flat)
            if b is not None:
                out += b.reshape(1, -1, 1)
            return real(out.view(flat.shape[0], -1, H, W), groups, None, None, 1e-5, act)

        fused = lambda: real_conv(cols, H, W, members, w, b, groups, None, None, 1e-5, act)  # noqa: E731
        t = alternate({"gemm": (on, gemm_then_chain), "fused kernel": (on, fused)}, blocks, reps)
        kernels.append({"what": f"convolution + chain, {members} members x {wm.shape[0] // members} filters on "
                                f"{tuple(flat.shape)} im2col", "before": "im2col GEMM + bias, then the chain kernel",
                        "before_s": t["gemm"], "fused_s": t["fused kernel"]})
    calls = alternate({name: (lambda name=name: use(name, prog), call) for name in steps}, blocks, max(3, reps // 3))
    chunks = {}
    for name in steps:
        use(name, prog)
        call()
        chunks[name] = key.engine.last_chunk
    use(final, prog)
    # the whole job: rounds and evaluations, no run directory (as benchmarks/ceiling.py's end to end), alternated
    e2e_steps = ("torch ops", "chain kernel, convolution apart", final)
    e2e: dict[str, list[float]] = {name: [] for name in e2e_steps}
    for _ in range(e2e_runs):
        for name in e2e_steps:
            use(name)
            e2e[name].append(ceiling.end_to_end(e2e_rounds, [])["run_s"])
    use(final)
    variants = [{"variant": name, "chunk": chunks[name], "call_s": calls[name],
                 "e2e_s": statistics.median(e2e[name]) if e2e_runs and name in e2e else None} for name in steps]
    return {"when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "loadavg": os.getloadavg(), "blocks": blocks,
            "reps": reps, "e2e_runs": e2e_runs, "e2e_rounds": e2e_rounds, "clients": len(batches), "K": cfg.estimator.K,
            "chunk": chunk, "max_rel_diff_of_loss_differences": rel, "kernels": kernels, "variants": variants}


def section(res: dict) -> str:
    ktable = [[r["what"], r["before"], f"{1e3 * r['before_s']:.2f}", f"{1e3 * r['fused_s']:.2f}", f"{r['before_s'] / r['fused_s']:.2f}x"]
              for r in res["kernels"]]
    base = res["variants"][0]
    vtable = [[v["variant"], str(v["chunk"]), f"{1e3 * v['call_s']:.1f}", f"{base['call_s'] / v['call_s']:.2f}x",
               f"{v['e2e_s']:.1f}" if v["e2e_s"] else "-", f"{base['e2e_s'] / v['e2e_s']:.2f}x" if v["e2e_s"] and base["e2e_s"] else "-"]
              for v in res["variants"]]
    return "\n".join([
        BEGIN, "## Fused (convolution ->) GroupNorm -> activation -> max-pool", "",
        f"Generated by `.venv/bin/python benchmarks/norm_act_pool.py` (raw: `benchmarks/results/norm_act_pool.json`), "
        f"{res['when']}, torch {res['torch']} (CPU capability {res['cpu_capability']}), one thread, load average "
        f"{res['loadavg'][0]:.1f} at the end. Each time: median over {res['blocks']} blocks of the best of a block's calls, "
        "the variants alternated block by block in one process. The kernels (`src/baffle/engine/batched/norm_act_pool.c`, "
        "built by `pip install -e .`, `BAFFLE_FUSED_KERNEL=0` turns them off) run every GroupNorm -> ReLU/Hardswish/Identity "
        "-> 2x2 max-pool chain of the batched engine in one pass, with the first layer's convolution (a shared input, "
        "perturbed filters) computed inside it, one member and one sample at a time in L1; the client's K loss differences "
        f"agree with the torch ops' to {res['max_rel_diff_of_loss_differences']:.1e} of their largest entry (float32 "
        "rounding of the norm's sums and of the convolution's order).", "",
        markdown_table(["kernel", "against", "before ms", "fused ms", "speed-up"], ktable, ["left", "left", "right", "right", "right"]),
        "",
        f"The default job's fused client call ({res['clients']} clients, K={res['K']}) and the whole default job "
        f"({res['e2e_rounds']} rounds, median of {res['e2e_runs']} alternated runs), each variant adding one step to the "
        "row above (`chunk`: members per chunk the planner chose):", "",
        markdown_table(["variant", "chunk", "client call ms", "x torch ops", "job s", "x torch ops"], vtable,
                       ["left", "right", "right", "right", "right", "right"]),
        "", END, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few blocks, JSON to a temp file, docs untouched")
    args = ap.parse_args()
    blocks, reps, e2e_runs = (2, 3, 1) if args.quick else (8, 12, 3)
    res = measure(blocks, reps, e2e_runs, 20 if args.quick else 300)
    out = Path(tempfile.gettempdir()) / "norm_act_pool_quick.json" if args.quick else OUT
    write_json(out, res)
    for r in res["kernels"]:
        print(f"{r['what']}: {r['before']} {1e3 * r['before_s']:.2f} ms, fused {1e3 * r['fused_s']:.2f} ms, {r['before_s'] / r['fused_s']:.2f}x")
    for v in res["variants"]:
        print(f"{v['variant']}: chunk {v['chunk']}, client call {1e3 * v['call_s']:.1f} ms, job {v['e2e_s']} s")
    if not args.quick:
        write_section(DOC, BEGIN, END, section(res))
    print(f"wrote {out}" + ("" if args.quick else f" and the {BEGIN} section of {DOC}"))


if __name__ == "__main__":
    main()
