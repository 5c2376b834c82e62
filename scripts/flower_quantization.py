"""SecAgg+ quantization of the K loss differences: effect on the aggregated estimate and on accuracy.

    python scripts/flower_quantization.py [--rounds 40] [--nodes 5] [--k 50] [--out docs/flower]

1. Estimate: a plain Flower run (in-memory grid, real ServerApp/ClientApp) records every node's K-vector of
   every round; each round's vectors are then pushed through Flower's own SecAgg+ quantizer
   (``baffle.flower.secure.secure_mean_model``: clip, stochastic rounding to 2**bits levels, modular sum,
   dequantize) for several (clip, bits). Reported: cosine with the unquantized weighted mean (worst and
   median over rounds), relative L2 error, and the fraction of scalars clipped. The K-vector IS the
   gradient estimate's coordinates in the seeded basis, so the cosine of the vectors equals the cosine of
   the reconstructed gradients up to the basis' non-orthogonality. A cosine of 0 means the quantized
   mean was all zeros (the signal fell below one step).
2. Accuracy: the same run repeated with ``secure = true`` (real SecAgg+ workflow and secaggplus_mod) at the
   default 22 bits and at a coarse 8 bits; final test accuracy of each next to the plain run.
Writes OUT/quantization.json and OUT/quantization.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from baffle.records.results import write_json, write_text
from baffle.records.tables import markdown_table, percent

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--out", default=str(REPO / "docs" / "flower"))
    a = p.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.ERROR)

    from baffle.flower import server_core
    from baffle.flower.inmemory import run_inmemory
    from baffle.flower.secure import QuantSpec, secure_mean_model

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from flower_docs_task import docs_base  # the task docs/flower/ was measured on

    base = docs_base(**{"num-server-rounds": a.rounds, "run-eval-every": a.rounds, "estimator-k": a.k,
                        "data-train-subset": 5000, "data-test-subset": 1000, "estimator-engine": "loop"})

    rounds: list[tuple[np.ndarray, np.ndarray]] = []
    real_ingest = server_core.ServerCore.ingest

    def spy(self, round_idx, uploads, expected, up_bytes):
        rounds.append((np.stack([u.loss_diffs for u in uploads]), np.array([u.num_samples for u in uploads], float)))
        return real_ingest(self, round_idx, uploads, expected, up_bytes)

    server_core.ServerCore.ingest = spy
    run_inmemory(dict(base, **{"result-dir": str(out / "quant_plain")}), a.nodes)
    server_core.ServerCore.ingest = real_ingest
    plain = json.loads((out / "quant_plain" / "result.json").read_text())

    absmax = float(max(np.abs(v).max() for v, _ in rounds))
    p999 = float(np.quantile(np.concatenate([np.abs(v).ravel() for v, _ in rounds]), 0.999))
    batch = float(base["federation-batch-size"])
    est = []
    for clip in (0.05, 0.5, 5.0):
        for bits in (8, 12, 16, 22):
            spec = QuantSpec(clip, bits)
            cos, rel, clipped = [], [], []
            for i, (v, w) in enumerate(rounds):
                exact = (w @ v.astype(np.float64)) / w.sum()
                q = secure_mean_model(v, w, spec, batch, seed=i).astype(np.float64)
                nq = np.linalg.norm(q)  # 0 when every coordinate fell below one quantization step
                cos.append(float(q @ exact / (nq * np.linalg.norm(exact))) if nq > 0 else 0.0)
                rel.append(float(np.linalg.norm(q - exact) / np.linalg.norm(exact)))
                clipped.append(float((np.abs(v) > clip).mean()))
            est.append({"clip": clip, "bits": bits, "cos_min": min(cos), "cos_median": float(np.median(cos)),
                        "rel_err_median": float(np.median(rel)), "clipped_fraction": float(np.mean(clipped))})

    acc = {"plain": plain["final_test_acc"]}
    for bits in (22, 8):
        d = out / f"quant_secure_{bits}"
        run_inmemory(dict(base, **{"secure": True, "secagg-bits": bits, "result-dir": str(d)}), a.nodes)
        acc[f"secagg+ {bits} bits, clip 0.5"] = json.loads((d / "result.json").read_text())["final_test_acc"]

    result = {"rounds": a.rounds, "nodes": a.nodes, "K": a.k, "abs_max_loss_diff": absmax, "abs_p99.9_loss_diff": p999,
              "estimate": est, "final_test_acc": acc, "config": base}
    write_json(out / "quantization.json", result, indent=2)
    text = quantization_md(result)
    write_text(out / "quantization.md", text)
    print(text, end="")
    return 0


def quantization_md(result: dict) -> str:
    """quantization.md from quantization.json."""
    head = (f"LeNet / MNIST (5000-sample train subset, 1000 test), {result['nodes']} nodes, K = {result['K']}, "
            f"{result['rounds']} rounds. Largest |loss difference| seen: {result['abs_max_loss_diff']:.3g} "
            f"(99.9th percentile {result['abs_p99.9_loss_diff']:.3g}).")
    est = markdown_table(
        ["clip", "bits", "cos, worst round", "cos, median", "rel. L2 error, median", "scalars clipped"],
        [[e["clip"], e["bits"], f"{e['cos_min']:.6f}", f"{e['cos_median']:.6f}", f"{e['rel_err_median']:.2e}",
          percent(e["clipped_fraction"], sign=True)] for e in result["estimate"]],
        align="right",
    )
    acc = markdown_table(["run", "final test accuracy"], [[k, percent(v, sign=True)] for k, v in result["final_test_acc"].items()],
                         align=[None, "right"])
    return f"{head}\n\n{est}\n\n{acc}\n"


if __name__ == "__main__":
    sys.exit(main())
