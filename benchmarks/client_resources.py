"""Peak memory and time per client step for each client kind, one fresh process per measurement.

Kinds: torch_float (baffle.client.Client, loop engine), onnx_float (baffle.onnx_client.OnnxClient: numpy +
onnxruntime, torch never imported), onnx_int8 (activations int8, re-calibrated each round: the calibration
is part of the step), pruned_onnx / pruned_torch (50% magnitude mask, masked directions), bp_torch
(baffle.baselines.BPClient: one forward + backward, the FedSGD client step).

Each child process loads the same MNIST batch pool and LeNet weights, runs one warm-up step, then
``--steps`` timed steps, 1 thread each. Reported: median wall and CPU seconds per step, the process's
peak RSS (VmHWM: runtime libraries included, what a device must provide), the RSS before the first step
(after imports and data) and their difference. Settings match experiments/inference_accuracy.py (K=20,
batch 16, sigma 1e-2) unless overridden.

Usage: python benchmarks/client_resources.py [--K 20] [--batch 16] [--steps 10]
Writes benchmarks/results/client_resources.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "client_resources.json"
KINDS = ("torch_float", "onnx_float", "onnx_int8", "pruned_onnx", "pruned_torch", "bp_torch")
POOL = 512


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def child(kind: str, work: Path, K: int, batch: int, steps: int, sigma: float) -> dict:
    """Runs inside the fresh process: only what ``kind`` needs is imported."""
    x, y = np.load(work / "x.npy"), np.load(work / "y.npy")
    weights = dict(np.load(work / "weights.npz"))
    mask = np.load(work / "mask.npy") if kind.startswith("pruned") else None
    from baffle.protocol import noise
    from baffle.protocol.messages import RoundPlan

    if kind.startswith("onnx") or kind == "pruned_onnx":
        from baffle.onnx_client import OnnxClient

        precision = "int8" if kind == "onnx_int8" else "float"
        client = OnnxClient(0, x, y, np.arange(len(y)), work / "model.onnx", batch_size=batch, seed=1, mask=mask, precision=precision)
        client.set_weights(weights)
        step = lambda r: client.step(RoundPlan(r, noise.round_seeds(0, r, K), sigma, "forward", batch))  # noqa: E731
    else:
        import torch

        torch.set_num_threads(1)
        from baffle.baselines import BPClient
        from baffle.client import Client
        from baffle.data.dataset import Dataset
        from baffle.models import build_model
        from baffle.engine import MaskedEngine

        model = build_model("lenet", in_channels=1, num_classes=10, image_size=x.shape[-1])
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        data = Dataset(torch.from_numpy(x), torch.from_numpy(y), 10, "mnist")
        cls = BPClient if kind == "bp_torch" else Client
        kw = {"engine": MaskedEngine(mask)} if mask is not None else {}
        client = cls(0, data, np.arange(len(y)), model, batch_size=batch, seed=1, **kw)
        if kind == "bp_torch":
            step = lambda r: client.gradient(None)  # noqa: E731
        else:
            step = lambda r: client.step(RoundPlan(r, noise.round_seeds(0, r, K), sigma, "forward", batch))  # noqa: E731
    rss_before = _status_kb("VmRSS")
    step(0)  # warm-up (first-call allocations, ORT kernel selection)
    wall, cpu = [], []
    for r in range(1, steps + 1):
        t, c = time.perf_counter(), time.process_time()
        step(r)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {
        "kind": kind,
        "step_wall_s": statistics.median(wall),
        "step_cpu_s": statistics.median(cpu),
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
        "rss_before_step_mb": rss_before / 1024,
        "step_peak_increment_mb": (_status_kb("VmHWM") - rss_before) / 1024,
        "torch_imported": "torch" in sys.modules,
    }


def prepare(work: Path, prune: float) -> None:
    import torch

    from baffle import estimator
    from baffle.data.registry import load_dataset
    from baffle.export import export_onnx, numpy_weights
    from baffle.models import build_model
    from baffle.pruning import magnitude_mask

    train = load_dataset("mnist", split="train")
    idx = np.random.default_rng(0).choice(len(train), POOL, replace=False)
    np.save(work / "x.npy", train.x[idx].numpy())
    np.save(work / "y.npy", train.y[idx].numpy())
    torch.manual_seed(0)
    model = build_model("lenet", in_channels=1, num_classes=10, image_size=28)
    (work / "model.onnx").write_bytes(export_onnx(model, (1, 28, 28)))
    np.savez(work / "weights.npz", **numpy_weights(model.state_dict()))
    np.save(work / "mask.npy", magnitude_mask(estimator.select_parameters(model), prune))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--K", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sigma", type=float, default=1e-2)
    ap.add_argument("--prune", type=float, default=0.5)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--child", nargs=2, metavar=("KIND", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.K, args.batch, args.steps, args.sigma)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="baffle-res-") as tmp:
        prepare(Path(tmp), args.prune)
        for kind in args.kinds.split(","):
            cmd = [sys.executable, __file__, "--child", kind, tmp, "--K", str(args.K), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--sigma", str(args.sigma)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{kind:13s} cpu {row['step_cpu_s'] * 1e3:8.1f} ms  wall {row['step_wall_s'] * 1e3:8.1f} ms  "
                  f"peak {row['peak_rss_mb']:7.1f} MB  (+{row['step_peak_increment_mb']:.1f} MB in steps)  torch={row['torch_imported']}", flush=True)
    result = {"K": args.K, "batch_size": args.batch, "sigma": args.sigma, "prune": args.prune, "steps": args.steps,
              "model": "lenet", "dataset": "mnist (28x28)", "threads": 1, "loadavg_1m_at_end": os.getloadavg()[0], "rows": rows}
    from baffle.records.results import write_json  # here, not at the top: the --child processes must not import torch

    write_json(OUT, result)


if __name__ == "__main__":
    main()
