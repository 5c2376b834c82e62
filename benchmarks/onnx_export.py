"""Weights as ONNX graph inputs (export once) vs re-exporting the model each round: bytes and time.

A BAFFLE client evaluates K+1 weight vectors per round. Two ways to give it an ONNX model:

* inputs:    export the graph once with every weight as a graph input; per round send the weights
             (4n bytes); per perturbation call ``session.run`` with other weight arrays.
* re-export: export the model with baked-in weights every round and ship the whole file; the client
             builds a new session per round, and, to evaluate a perturbation, must rewrite the
             initializers and build a new session again (K+1 times per round).

Measured on LeNet/MNIST (and WRN-10-2/CIFAR shapes for scale): median CPU time of ``--reps``; 1 thread.
Usage: python benchmarks/onnx_export.py [--reps 5]
Writes benchmarks/results/onnx_export.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from baffle.protocol import noise
from baffle.export import export_onnx, numpy_weights
from baffle.models import build_model
from baffle.onnx_client import check_weights
from baffle.onnx_session import make_session
from baffle.records.results import results_dir, write_json

OUT = results_dir(__file__) / "onnx_export.json"


def median_time(fn, reps: int) -> float:
    """Median CPU seconds of this process (the machine is shared: wall time measures the neighbours)."""
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return statistics.median(times)


def measure(name: str, shape: tuple[int, int, int], reps: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = build_model(name, in_channels=shape[0], num_classes=10, image_size=shape[1])
    n = sum(p.numel() for p in model.parameters())
    x = np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32)
    w = numpy_weights(model.state_dict())

    # inputs: export once, then per round only weights; per perturbation one run with new arrays
    graph = export_onnx(model, shape)
    t_export_inputs = median_time(lambda: export_onnx(model, shape), reps)
    sess = make_session(graph)
    t_session_inputs = median_time(lambda: make_session(graph), reps)
    t_set_weights = median_time(lambda: check_weights(sess, w), reps)
    eps = noise.direction(1, n)
    feeds = {"x": x, **w}
    t_run = median_time(lambda: sess.run(None, feeds), reps)

    # re-export: whole model every round, and a new session for every perturbed weight vector
    full = export_onnx(model, shape, with_weights=True)
    t_export_full = median_time(lambda: export_onnx(model, shape, with_weights=True), reps)
    t_session_full = median_time(lambda: make_session(full), reps)
    proto = onnx.load_from_string(full)

    def rebuild_perturbed() -> None:
        offset = 0
        for init in proto.graph.initializer:
            if init.name in w:
                arr = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array(arr + 1e-3 * eps[offset : offset + arr.size].reshape(arr.shape), init.name))
                offset += arr.size
        make_session(proto.SerializeToString()).run(None, {"x": x})

    t_perturb_full = median_time(rebuild_perturbed, reps)
    return {
        "model": name,
        "input_shape": list(shape),
        "batch": batch,
        "n_params": n,
        "weight_bytes": 4 * n,
        "inputs": {
            "graph_bytes_once": len(graph),
            "bytes_per_round": 4 * n,
            "export_s_once": t_export_inputs,
            "session_s_once": t_session_inputs,
            "client_load_weights_s_per_round": t_set_weights,
            "per_perturbation_s": t_run,
        },
        "reexport": {
            "bytes_per_round": len(full),
            "export_s_per_round": t_export_full,
            "session_s_per_round": t_session_full,
            "per_perturbation_s": t_perturb_full,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [measure("lenet", (1, 28, 28), args.reps, 32), measure("wrn10_2", (3, 32, 32), args.reps, 32)]
    for r in rows:
        a, b = r["inputs"], r["reexport"]
        print(f"{r['model']}: inputs graph {a['graph_bytes_once']} B once + {a['bytes_per_round']} B/round, "
              f"run {a['per_perturbation_s'] * 1e3:.2f} ms/perturbation | re-export {b['bytes_per_round']} B/round, "
              f"export {b['export_s_per_round'] * 1e3:.0f} ms/round, rebuild {b['per_perturbation_s'] * 1e3:.1f} ms/perturbation")
    write_json(OUT, {"reps": args.reps, "threads": 1, "loadavg_1m_at_end": os.getloadavg()[0], "rows": rows})


if __name__ == "__main__":
    main()
