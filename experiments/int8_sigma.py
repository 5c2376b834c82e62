"""How int8 quantization interacts with sigma: cosine of the int8 client's estimate with the float one.

For LeNet on MNIST (at initialisation and after a short backprop warm-up, since trained weights have a
wider range and hence a coarser int8 grid), for each sigma and each of three minibatches:

* float:        ONNX Runtime float32 loss differences dL (same seeds, same batch) -> g_float
* int8:         activations int8 (scales calibrated on the batch at W, frozen), weights float -> g_int8
* int8_weights: activations AND weights int8 (per-tensor, calibrated at W) -> g_int8w

Reported: cos(g_q, g_float), the median |dL_float| (the signal), the median |dL_q - dL_float| (the
quantization error of a finite difference), their ratio, and cos(g_float, true gradient) as the
estimator's own noise floor at this K. The per-tensor int8 weight steps are reported too.

Usage: python experiments/int8_sigma.py [--K 64]
Writes experiments/results/int8_sigma.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from baffle import estimator
from baffle.protocol import noise
from baffle.data.registry import load_dataset
from baffle.export import export_onnx, numpy_weights
from baffle.models import build_model
from baffle.onnx_client import loss_differences, parameter_names
from baffle.onnx_session import make_session
from baffle.onnx_quant import quantized_session
from baffle.records.results import results_dir, write_json
from baffle.records.tables import table_lines
from baffle.reconstruct import reconstruct

OUT = results_dir(__file__) / "int8_sigma.json"
SIGMAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def warm_up(model: torch.nn.Module, train, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, len(train), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
        opt.step()


def measure(model: torch.nn.Module, graph: bytes, batches, K: int) -> list[dict]:
    w = numpy_weights(model.state_dict())
    fsess = make_session(graph)
    names = parameter_names(fsess)
    params = estimator.select_parameters(model)
    n = sum(w[k].size for k in names)
    rows = []
    for sigma in SIGMAS:
        acc: dict[str, list[float]] = {}
        for b, (x, y) in enumerate(batches):
            seeds = noise.round_seeds(99, b, K)
            xn, yn = x.numpy(), y.numpy()
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            true = torch.cat([p.grad.reshape(-1) for _, p in params]).numpy()
            d_f = loss_differences(fsess, w, names, xn, yn, seeds, sigma)
            g_f = reconstruct(d_f, seeds, sigma, n)
            acc.setdefault("cos_float_true", []).append(cosine(g_f, true))
            acc.setdefault("median_abs_dL", []).append(float(np.median(np.abs(d_f))))
            for mode, qw in (("int8", False), ("int8_weights", True)):
                d_q = loss_differences(quantized_session(graph, xn, w, qw), w, names, xn, yn, seeds, sigma)
                g_q = reconstruct(d_q, seeds, sigma, n)
                acc.setdefault(f"cos_{mode}_float", []).append(cosine(g_q, g_f))
                acc.setdefault(f"cos_{mode}_true", []).append(cosine(g_q, true))
                acc.setdefault(f"median_abs_err_{mode}", []).append(float(np.median(np.abs(d_q - d_f))))
        row = {"sigma": sigma, **{k: float(np.mean(v)) for k, v in acc.items()}}
        for mode in ("int8", "int8_weights"):
            row[f"snr_{mode}"] = row["median_abs_dL"] / max(row[f"median_abs_err_{mode}"], 1e-30)
        rows.append(row)
        print(f"  sigma={sigma:g}: cos int8 {row['cos_int8_float']:.3f}, int8_weights {row['cos_int8_weights_float']:.3f}", flush=True)
    return rows


def weight_steps(model: torch.nn.Module) -> dict[str, float]:
    """Symmetric per-tensor int8 step max|w|/127 of each weight tensor (what sigma competes with)."""
    return {n: float(p.detach().abs().max() / 127) for n, p in model.named_parameters() if p.dim() > 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--warmup-steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train = load_dataset("mnist", split="train")
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(3):
        idx = torch.randint(0, len(train), (32,), generator=g)
        batches.append((train.x[idx], train.y[idx]))
    torch.manual_seed(0)
    model = build_model("lenet", in_channels=1, num_classes=10, image_size=28)
    graph = export_onnx(model, (1, 28, 28))
    result = {"K": args.K, "batch_size": 32, "model": "lenet", "dataset": "mnist", "states": {}}
    for state in ("init", "warm"):
        if state == "warm":
            warm_up(model, train, args.warmup_steps)
        print(f"{state}:", flush=True)
        result["states"][state] = {"weight_int8_steps": weight_steps(model), "rows": measure(model, graph, batches, args.K)}
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["warmup_steps"] = args.warmup_steps
    write_json(OUT, result)
    print(table(result))


def table(result: dict) -> str:
    lines = []
    for state, data in result["states"].items():
        steps = data["weight_int8_steps"]
        lines.append(f"\n**{state}** (int8 weight steps max|w|/127: " + ", ".join(f"{k} {v:.1e}" for k, v in steps.items()) + ")\n")
        lines += table_lines(
            ["sigma", "cos(int8, float)", "cos(int8_weights, float)", "median abs dL", "abs err int8", "abs err int8_weights",
             "cos(float, true grad)"],
            [[f"{r['sigma']:g}", f"{r['cos_int8_float']:.3f}", f"{r['cos_int8_weights_float']:.3f}", f"{r['median_abs_dL']:.2e}",
              f"{r['median_abs_err_int8']:.2e}", f"{r['median_abs_err_int8_weights']:.2e}", f"{r['cos_float_true']:.3f}"]
             for r in data["rows"]],
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
