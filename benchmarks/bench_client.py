"""Client speed, memory and bytes of forward-only (BAFFLE) clients: loop vs batched engine, BAFFLE vs BP.

    .venv/bin/python benchmarks/bench_client.py            # full run (long on a shared 2-core machine)
    .venv/bin/python benchmarks/bench_client.py --quick    # fewer sizes, for a smoke run

Prints a table per section and writes benchmarks/results/client.json and docs/performance.md (every
number in that document comes from this JSON). Sections:

1. compute peak: the best float32 rate of large oneDNN convolutions and a 2048^3 GEMM at the process's
   thread count (``ceiling.measure_ceiling``; the GEMM alone understated it about 2x), timed in this run;
2. client step: ``baffle.engine.loop.loss_differences`` (the reference loop of K+1 forwards) vs the batched
   engine (``baffle.engine.batched``, default memory budget) for LeNet (1x28x28) and WRN-10-2 (3x32x32),
   K in {20, 100, 500}, batch 32 and 64; runs of the two engines alternate and the best of ``reps`` is
   kept (the machine is shared; the best run is the least disturbed one); achieved forward GFLOP/s =
   ``count_flops`` x batch x (K+1) / time, and its ratio to the compute peak;
3. client peak memory: one fresh subprocess per measurement; after setup (imports, model, data) the
   child resets the kernel's peak-RSS counter (``/proc/self/clear_refs`` = 5) and reads VmRSS, runs one
   client step, reads VmHWM: the step's own peak is VmHWM - VmRSS(before). Same batch, BAFFLE
   (batched engine, and the loop) vs a BP client (``baselines.BPClient.gradient``: forward + backward);
4. upload bytes per client per round: ``Upload.to_bytes()`` (16-byte header + 4K) vs a gradient (16 + 4n);
5. time per round: ``server.build`` + ``RoundRunner.run_round`` for the default ``baffle run`` config
   (``Config()``), the same with ``estimator.fuse_clients=false`` and with ``estimator.engine=loop``, and the
   BP FedSGD baseline (``run.method=fedsgd``), one warm-up round then ``--rounds`` timed rounds each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from baffle.records.results import results_dir, step_peak, write_json, write_section
from baffle.records.tables import table_lines, yes_no

ROOT = Path(__file__).resolve().parents[1]
RESULTS = results_dir(__file__) / "client.json"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench_client:begin -->", "<!-- bench_client:end -->"
SHAPES = {"lenet": (1, 28, 28), "wrn10_2": (3, 32, 32)}
SIGMA = 1e-3


def _model(name: str) -> torch.nn.Module:
    from baffle.models import build_model

    torch.manual_seed(0)
    c, s, _ = SHAPES[name]
    return build_model(name, in_channels=c, image_size=s)


def _batch(name: str, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(b)
    return torch.randn(b, *SHAPES[name], generator=g), torch.randint(0, 10, (b,), generator=g)


# ---- 1. compute peak ---------------------------------------------------------------------------------
def compute_peak() -> dict:
    """The ceiling of benchmarks/ceiling.py (best of oneDNN convolutions and the 2048^3 GEMM) at this
    process's thread count."""
    if str(ROOT / "benchmarks") not in sys.path:  # run as a script it is already first; imported, maybe not
        sys.path.insert(0, str(ROOT / "benchmarks"))
    from ceiling import measure_ceiling

    return measure_ceiling(threads=torch.get_num_threads())


def _peak(res: dict) -> tuple[float, str]:
    """(GFLOP/s, name) of the peak the "% of peak" figures use; JSON from before the ceiling used the GEMM."""
    if "ceiling_gflops" in res:
        return res["ceiling_gflops"], "compute ceiling"
    return res["matmul_peak_gflops"], "matmul peak"


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- 2. client step ----------------------------------------------------------------------------------
def step_times(models: list[str], ks: list[int], batches: list[int], reps: dict[str, int], wrn_max_k: int) -> list[dict]:
    from baffle import estimator
    from baffle.protocol import noise
    from baffle.config import EstimatorConfig
    from baffle.engine import BatchedEngine
    from baffle.engine.loop import loss_differences
    from baffle.models import count_flops

    engine = BatchedEngine(EstimatorConfig().max_memory_mb)
    rows = []
    for name in models:
        model = _model(name)
        params = estimator.select_parameters(model)
        flops = count_flops(model, SHAPES[name])
        for b in batches:
            x, y = _batch(name, b)
            engine(model, params, x, y, noise.round_seeds(0, 0, 2), SIGMA)  # trace once, warm up
            for k in ks:
                if name == "wrn10_2" and k > wrn_max_k:
                    rows.append({"model": name, "batch": b, "K": k, "skipped": f"WRN K > {wrn_max_k} not run (--wrn-max-k)"})
                    continue
                seeds = noise.round_seeds(1, k, k)
                t_loop, t_bat = float("inf"), float("inf")
                for _ in range(reps[name]):
                    t_loop = min(t_loop, _timed(lambda: loss_differences(model, params, x, y, seeds, SIGMA)))
                    t_bat = min(t_bat, _timed(lambda: engine(model, params, x, y, seeds, SIGMA)))
                total = flops * b * (k + 1)
                row = {
                    "model": name, "batch": b, "K": k, "forwards": k + 1, "flops_per_sample": flops,
                    "loop_s": t_loop, "batched_s": t_bat, "speedup": t_loop / t_bat, "chunk": engine.last_chunk, "sub_batch": engine.last_sub_batch,
                    "loop_gflops": total / t_loop / 1e9, "batched_gflops": total / t_bat / 1e9, "reps": reps[name], "load1": round(os.getloadavg()[0], 1),
                }  # fmt: skip
                rows.append(row)
                print(f"  {name:8s} B={b:3d} K={k:4d}  loop {t_loop:8.3f}s  batched {t_bat:8.3f}s  x{row['speedup']:.2f}"
                      f"  {row['loop_gflops']:.1f} -> {row['batched_gflops']:.1f} GFLOP/s (chunk {engine.last_chunk} x {engine.last_sub_batch} samples)", flush=True)
    return rows


# ---- 3. memory (child processes) ---------------------------------------------------------------------


def memory_child(kind: str, name: str, b: int, k: int) -> dict:
    """Runs in a fresh process: one client step of ``kind``; returns RSS numbers in MiB."""
    from baffle.baselines import BPClient
    from baffle.client import Client
    from baffle.config import EstimatorConfig
    from baffle.data.dataset import Dataset
    from baffle.engine import make_engine
    from baffle.protocol import noise
    from baffle.protocol.messages import RoundPlan

    torch.set_num_threads(1)
    model = _model(name)
    x, y = _batch(name, 4 * b)
    data = Dataset(x, y, 10, "bench")
    engine = {"baffle_batched": make_engine("batched", EstimatorConfig().max_memory_mb), "baffle_loop": make_engine("loop")}
    cls = BPClient if kind == "bp" else Client
    client = cls(0, data, np.arange(4 * b), model, batch_size=b, seed=0, engine=engine.get(kind, engine["baffle_loop"]))
    plan = RoundPlan(0, noise.round_seeds(0, 0, k), SIGMA, "forward", b)
    if kind == "baffle_batched":  # tracing the model is a one-off cost of the engine, not of a step
        engine[kind].supports(model)
    _, before, peak = step_peak(lambda: client.gradient(None) if kind == "bp" else client.step(plan))
    return {"kind": kind, "model": name, "batch": b, "K": k, "rss_before_mib": before,
            "peak_mib": peak, "step_peak_mib": peak - before}  # fmt: skip


def memory_rows(models: list[str], batches: list[int], k: int) -> list[dict]:
    rows = []
    for name in models:
        for b in batches:
            for kind in ("baffle_batched", "baffle_loop", "bp"):
                cmd = [sys.executable, __file__, "--memory-child", kind, name, str(b), str(k)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
                row = json.loads(out.strip().splitlines()[-1])
                rows.append(row)
                print(f"  {name:8s} B={b:3d} {kind:15s} step peak {row['step_peak_mib']:8.1f} MiB "
                      f"(process peak {row['peak_mib']:.0f} MiB)", flush=True)
    return rows


# ---- 4. bytes ----------------------------------------------------------------------------------------
def upload_rows(ks: list[int]) -> list[dict]:
    from baffle.protocol.messages import Upload
    from baffle.models import num_parameters

    rows = []
    for name in SHAPES:
        n = num_parameters(_model(name))
        for k in ks:
            up = Upload(0, 0, np.zeros(k, np.float32), 32).to_bytes()
            rows.append({"model": name, "n": n, "K": k, "baffle_bytes": len(up), "baffle_payload": len(up) - 16,
                         "gradient_bytes": 16 + 4 * n, "ratio": (16 + 4 * n) / len(up)})  # fmt: skip
    return rows


# ---- 5. rounds ---------------------------------------------------------------------------------------
def round_rows(rounds: int) -> list[dict]:
    from baffle.config import Config
    from baffle.sim.rounds import RoundRunner
    from baffle.sim.factory import build

    variants = [
        ("baffle default (batched, fused clients)", []),
        ("baffle, batched, client by client", ["estimator.fuse_clients=false"]),
        ("baffle, loop engine", ["estimator.engine=loop", "estimator.fuse_clients=false"]),
        ("BP FedSGD", ["run.method=fedsgd"]),
    ]
    rows = []
    for label, overrides in variants:
        cfg = Config()
        cfg.apply_overrides(overrides)
        fed = build(cfg.validate())
        runner = RoundRunner(fed)
        runner.run_round(0)  # warm-up (traces the model, touches the data)
        times = [_timed(lambda r=r: runner.run_round(r)) for r in range(1, rounds + 1)]
        row = {"variant": label, "overrides": overrides, "rounds_timed": rounds, "median_round_s": statistics.median(times),
               "round_s": times, "clients": len(fed.clients), "K": cfg.estimator.K, "batch": cfg.federation.batch_size,
               "model": cfg.model.name, "dataset": cfg.data.name}  # fmt: skip
        rows.append(row)
        print(f"  {label:42s} {row['median_round_s']:8.2f} s/round", flush=True)
    return rows


# ---- report ------------------------------------------------------------------------------------------
def goals(res: dict) -> list[dict]:
    steps = [r for r in res["steps"] if "skipped" not in r]
    out = []

    def add(goal, value, target, met, detail):
        out.append({"goal": goal, "value": value, "target": target, "met": bool(met), "detail": detail})

    peak, label = _peak(res)
    le = [r for r in steps if r["model"] == "lenet" and r["K"] == 100]
    if le:
        worst = min(le, key=lambda r: r["speedup"])
        loop_pct = 100 * worst["loop_gflops"] / peak
        add("batched >= 3x the loop, LeNet K=100", round(worst["speedup"], 2), 3.0, worst["speedup"] >= 3,
            f"worst over batch sizes (B={worst['batch']}); the loop itself ran at {loop_pct:.0f}% of the {label} "
            f"there, so 3x would need {3 * loop_pct:.0f}% of peak")
    wrn = [r for r in steps if r["model"] == "wrn10_2"]
    if wrn:
        worst = min(wrn, key=lambda r: r["speedup"])
        add("batched never slower than the loop, WRN-10-2", round(worst["speedup"], 2), 1.0, worst["speedup"] >= 1,
            f"worst over measured K and batch (B={worst['batch']}, K={worst['K']}); the loop ran at "
            f"{100 * worst['loop_gflops'] / peak:.0f}% of the {label}")
    le5 = [r for r in steps if r["model"] == "lenet" and r["K"] == 500]
    if le5:
        v = max(r["batched_gflops"] for r in le5) / peak
        add(f"throughput >= 40% of {label}, LeNet K=500", round(v, 3), 0.4, v >= 0.4, "best batch size")
    mem = {(r["model"], r["batch"], r["kind"]): r["step_peak_mib"] for r in res["memory"]}
    for (name, b, kind), v in mem.items():
        if name == "wrn10_2" and kind == "baffle_batched" and (name, b, "bp") in mem:
            ratio = v / mem[(name, b, "bp")]
            add(f"BAFFLE step memory <= 0.5x BP, WRN-10-2 B={b}", round(ratio, 3), 0.5, ratio <= 0.5, "step peak RSS ratio")
    ok = all(r["baffle_payload"] == 4 * r["K"] for r in res["uploads"])
    add("upload payload exactly 4K bytes", "4K" if ok else "not 4K", "4K", ok, "Upload.to_bytes() minus 16-byte header")
    return out


def write_doc(res: dict) -> None:
    L = []
    m = res["machine"]
    peak, label = _peak(res)
    L += ["# Performance of forward-only clients", "",
          "Generated by `.venv/bin/python benchmarks/bench_client.py"
          + (" --quick" if res["args"]["quick"] else "") + "` "
          f"(raw numbers: `benchmarks/results/client.json`), {res['date']}.", "",
          f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} torch threads. "
          f"Load average when the run started / ended: {m['load_start']} / {m['load_end']}. "
          "The machine is shared with other jobs, so absolute times are noisy; each engine pair was run "
          "alternately and the best of the repeats kept, and every ratio below comes from this one run.", ""]
    L += ["## Goals", ""]
    L += table_lines(["goal", "measured", "target", "met", "how measured / gap"],
                     [[g["goal"], g["value"], g["target"], yes_no(g["met"], "**no**"), g["detail"]] for g in res["goals"]])
    if "ceiling_gflops" in res:
        L += ["", f"Measured compute ceiling (best float32 rate of large oneDNN convolutions and a 2048^3 GEMM, "
              f"`benchmarks/ceiling.py`'s `measure_ceiling`, best of 5 each, same process, {m['threads']} torch threads): "
              f"**{peak:.1f} GFLOP/s** ({res['ceiling_kernel']}; the GEMM alone: {res['matmul_peak_gflops']:.1f} GFLOP/s).", ""]
    else:
        L += ["", f"Measured float32 matmul peak (2048^3 GEMM, best of 5, same process): **{peak:.1f} GFLOP/s**.", ""]
    L += ["## Client step: loop of K+1 forwards vs batched engine", "",
          "`loop` = `baffle.engine.loop` (one forward per perturbation); `batched` = "
          "`baffle.engine.batched` with the default `estimator.max_memory_mb`; `chunk` = perturbed models per "
          "batched call, each on slices of `slice` samples; `load` = the machine's 1-minute load average when the "
          "row finished (2 cores, shared: higher load, noisier and slower rows). GFLOP/s = `count_flops` x batch x (K+1) / time; `% peak` is the batched rate over "
          f"the {label}.", ""]
    rows = []
    for r in res["steps"]:
        if "skipped" in r:  # the writer leaves the remaining cells empty
            rows.append([r["model"], r["batch"], r["K"], r["skipped"]])
            continue
        rows.append([r["model"], r["batch"], r["K"], f"{r['loop_s']:.3f}", f"{r['batched_s']:.3f}", f"{r['speedup']:.2f}x",
                     f"{r['loop_gflops']:.1f}", f"{r['batched_gflops']:.1f}",
                     f"{100 * r['batched_gflops'] / peak:.0f}%", f"{r['chunk']} x {r['sub_batch']}", r["load1"]])
    L += table_lines(["model", "batch", "K", "loop s", "batched s", "speed-up", "loop GFLOP/s", "batched GFLOP/s", "% peak",
                      "chunk x slice", "load"], rows)
    L += ["", "## Client peak memory of one step", "",
          "Each number is from a fresh process (1 thread): after imports, model and data are set up the "
          "child resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`), reads VmRSS, runs "
          "one client step and reads VmHWM; `step peak` = VmHWM - VmRSS before, i.e. the memory the step "
          "itself needs on top of a loaded model and dataset. BAFFLE runs under `torch.inference_mode` "
          "(no activations kept); BP is `BPClient.gradient` (forward + autograd backward).", "",
          f"K = {res['memory'][0]['K'] if res['memory'] else '-'}.", ""]
    bp = {(r["model"], r["batch"]): r["step_peak_mib"] for r in res["memory"] if r["kind"] == "bp"}
    rows = []
    for r in res["memory"]:
        ref = bp.get((r["model"], r["batch"]))
        rows.append([r["model"], r["batch"], r["kind"], f"{r['step_peak_mib']:.1f}", f"{r['peak_mib']:.0f}",
                     f"{r['step_peak_mib'] / ref:.2f}x" if ref else "-"])  # no BP row at this batch: no ratio
    L += table_lines(["model", "batch", "client step", "step peak MiB", "process peak MiB", "vs BP"], rows)
    L += ["", "## Upload bytes per client per round", ""]
    L += table_lines(["model", "n params", "K", "BAFFLE bytes (payload)", "gradient/weights bytes", "gradient / BAFFLE"],
                     [[r["model"], r["n"], r["K"], f"{r['baffle_bytes']} ({r['baffle_payload']})", r["gradient_bytes"],
                       f"{r['ratio']:.0f}x"] for r in res["uploads"]])
    L += ["", "## Time per round, default `baffle run` config vs BP FedSGD", "",
          "`server.build(Config())` + `RoundRunner.run_round`: one warm-up round, then the median of the "
          "timed rounds (sampling, all clients' steps, validation, aggregation and the server step; no "
          "evaluation).", ""]
    L += table_lines(["variant", "model / data", "clients x K x batch", "s per round"],
                     [[r["variant"], f"{r['model']} / {r['dataset']}", f"{r['clients']} x {r['K']} x {r['batch']}",
                       f"{r['median_round_s']:.2f}"] for r in res["rounds"]])
    from baffle.config import Config

    now = Config()
    stale = [r for r in res["rounds"] if (r["model"], r["K"]) != (now.model.name, now.estimator.K)]
    if stale:  # the table was measured before the default changed: say so instead of passing it off as today's
        L += ["", f"**Measured with an earlier default** ({stale[0]['model']}, K={stale[0]['K']}); the current default "
              f"({now.model.name}, K={now.estimator.K}) is timed end to end in [default-run.md](default-run.md)."]
    L += ["", "## What the batched engine does, and what did not win", "", NOTES.rstrip("\n")]
    # only this script's section: the noise, reconstruction, thread and device sections of the page are other scripts'
    write_section(DOC, BEGIN, END, "\n".join([BEGIN, *L, END]), title="")


NOTES = """\
`baffle.engine.batched` traces the model once with `torch.fx` and runs a chunk of P perturbed models as one
model P times wider: member activations sit side by side in the channel dimension, `(B, P*C, H, W)`, so
GroupNorm (P*G groups), BatchNorm (P*C channels), activations and pooling run unchanged; the first
convolution (shared input) is one im2col + GEMM with P*C_out output rows; later convolutions are grouped
convolutions (groups = P); linear layers are one wide GEMM (shared input) or a batched matmul. The P weight
sets are written tensor by tensor straight from each seed's direction stream, so no block of directions
exists beside them, except for small models, where a chunk's directions (at most 4 MiB) are generated one call per
direction, because each generator call there is mostly overhead. The chunk is bounded by `estimator.max_memory_mb` and by a cache-sized working set. Anything the tracer or
interpreter does not know falls back to the reference loop (same answers, loop speed).

Measured while building it (single thread, same shared machine, alternating runs):
* torch's NCHW `max_pool2d` was the loop's single largest cost for LeNet (about as long as the 10 MFLOP/sample
  second convolution). A 2x2/stride-2 max pool written as the elementwise max of four strided views is
  bit-identical and more than 10x faster; the batched engine uses it (the reference loop does not, it runs
  the model as written).
* the first convolution (1 input channel) as im2col + GEMM was about 3x faster than the direct convolution.
* grouped convolution vs P separate convolutions: equal within noise at 1 thread, much faster at 2 threads,
  where every extra call costs a thread barrier.
* large chunks are slower, not faster: beyond about 16 members at batch 32 the norm/activation passes
  stream from DRAM; the chunk therefore keeps one layer's input+output under ~16 MiB.
* when a single member at the full batch is over that bound (WRN-10-2 at batch 32 and 64), the batch is
  evaluated in equal slices (exact for models without batch statistics: the losses are per sample). This
  is what keeps the WRN-10-2 step far below BP's memory (memory table). It does not reliably make
  WRN-10-2 faster: the loop already runs its convolutions close to the GEMM peak, and across runs on this
  shared machine the WRN ratio has landed on both sides of 1 (see the table; the worst row sets the goal).
* for LeNet the batched engine trades memory for speed: a chunk of several members costs more RAM than one
  BP step (memory table). `estimator.max_memory_mb` bounds it; the loop engine stays below BP.
* an im2col + batched-GEMM formulation of the per-member convolutions was 5-8x slower than grouped
  convolution (the im2col buffer is 25x the activation for 5x5 kernels).
* the speed-up depends on how busy the shared machine is: under heavy load (load average 15-20) the
  smaller per-call working sets of the batched engine gained the most; on a quieter machine the loop's
  own forwards run closer to the GEMM peak and the margin shrinks (compare the `load` column).
* the remaining gap to the matmul peak is the per-member convolution itself (the same GEMM shape as in the
  loop: batching perturbations cannot make a 16->64 channel convolution a bigger GEMM) plus the
  memory-bound normalisation and activation passes, which scale with K.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="K in {20,100}, batch 32, fewer repeats")
    ap.add_argument("--wrn-max-k", type=int, default=100, help="largest K timed for WRN-10-2 (its loop is slow)")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per variant (after one warm-up)")
    ap.add_argument("--memory-child", nargs=4, metavar=("KIND", "MODEL", "BATCH", "K"), help=argparse.SUPPRESS)
    ap.add_argument("--skip", nargs="*", default=[], choices=["steps", "memory", "rounds"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine every multi-threaded op waits at a barrier "
                         "for descheduled threads, which made 2-thread timings swing by 5x here)")
    ap.add_argument("--memory-k", type=int, default=20, help="K of the memory measurements")
    ap.add_argument("--doc-only", action="store_true", help="rewrite docs/performance.md from the saved JSON")
    args = ap.parse_args()
    if args.doc_only:
        res = json.loads(RESULTS.read_text())
        res["goals"] = goals(res)
        write_json(RESULTS, res)
        write_doc(res)
        return
    if args.memory_child:
        kind, name, b, k = args.memory_child
        print(json.dumps(memory_child(kind, name, int(b), int(k))))
        return
    torch.set_num_threads(args.threads)
    ks = [20, 100] if args.quick else [20, 100, 500]
    batches = [32] if args.quick else [32, 64]
    reps = {"lenet": 2, "wrn10_2": 2}
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args)}
    res["machine"] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "load_start": _load(), "python": platform.python_version()}  # fmt: skip
    print(f"machine: {res['machine']}")
    ceiling = compute_peak()
    print(f"compute ceiling: {ceiling['ceiling_gflops']:.1f} GFLOP/s ({ceiling['ceiling_kernel']}), "
          f"GEMM {ceiling['gemm_gflops']:.1f} GFLOP/s")
    print("client step (loop vs batched):")
    res["steps"] = [] if "steps" in args.skip else step_times(list(SHAPES), ks, batches, reps, args.wrn_max_k)
    again = compute_peak()
    print(f"compute ceiling again: {again['ceiling_gflops']:.1f} GFLOP/s")
    best = max(ceiling, again, key=lambda c: c["ceiling_gflops"])
    res["ceiling_gflops"], res["ceiling_kernel"] = best["ceiling_gflops"], best["ceiling_kernel"]
    res["matmul_peak_gflops"] = max(ceiling["gemm_gflops"], again["gemm_gflops"])  # the GEMM alone, for reference
    res["ceiling_kernels"] = [ceiling["kernels"], again["kernels"]]
    print("client step memory (fresh process each):")
    res["memory"] = [] if "memory" in args.skip else memory_rows(list(SHAPES), batches, args.memory_k)
    res["uploads"] = upload_rows(ks)
    print("time per round:")
    res["rounds"] = [] if "rounds" in args.skip else round_rows(args.rounds)
    res["machine"]["load_end"] = _load()
    res["goals"] = goals(res)
    for g in res["goals"]:
        print(f"  goal {g['goal']}: {g['value']} (target {g['target']}) {'met' if g['met'] else 'NOT met'}")
    write_json(RESULTS, res)
    write_doc(res)
    print(f"wrote {RESULTS.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
