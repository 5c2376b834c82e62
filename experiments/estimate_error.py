"""Where the forward-only estimate's error comes from along the default job, and what would shrink it.

With K shared Gaussian directions and the clients' mean minibatch gradient g (C clients x B samples), the
estimate (1/K) sum_k (eps_k . g) eps_k has an error whose expected squared norm is about

    shared directions (baffle):      (n + 1) * (|G|^2 + s_B^2 / C) / K  +  s_B^2 / C
    each client its own directions:  (n + 1) * (|G|^2 + s_B^2) / (K * C)  +  s_B^2 / C

where G is the full training gradient, s_B^2 = E|g_B - G|^2 the variance of ONE client's B-sample minibatch
gradient and n the trained parameters (Gaussian directions, large n). This script measures |G|^2 and s_B^2
with autograd at three points of the default job (its initial weights, after 300 rounds and after 3,000),
and prints both errors and the ratio. Why: per-client directions (FedKSeed-style seeds per client) are the
obvious way to get C x K directions per round for the same uploads; they only pay while |G|^2 is comparable
to s_B^2 / C. Near convergence the minibatch term dominates, which is why more samples per pass (the
``default_batch`` and ``pass_budget`` sweeps) are the lever that works.

    python experiments/estimate_error.py               # trains the default job to 3,000 rounds (~1 min), measures
    python experiments/estimate_error.py --rounds 300  # a smaller check

Writes experiments/results/estimate_error.json and the ``estimate_error`` section of docs/experiments.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle.config import Config  # noqa: E402
from baffle.records.results import results_dir, write_json, write_section  # noqa: E402
from baffle.records.tables import markdown_table  # noqa: E402
from baffle.sim.factory import build  # noqa: E402
from baffle.sim.loop import Simulation  # noqa: E402

OUT = results_dir(__file__) / "estimate_error.json"
DOC = ROOT / "docs" / "experiments.md"
BEGIN, END = "<!-- estimate_error:begin -->", "<!-- estimate_error:end -->"


def gradient(model: torch.nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in params])


def measure(cfg: Config, batches: list[int], draws: int, seed: int) -> dict:
    """|G|^2 (mean over 5 gradients of 2,000 samples) and s_B^2 for each B (``draws`` minibatches each)."""
    fed = build(cfg)
    model = fed.strategy.model
    params = [p for _, p in fed.strategy.params]
    x, y, rng = fed.train.x, fed.train.y, np.random.default_rng(seed)

    def grad_of(size: int) -> torch.Tensor:
        idx = torch.from_numpy(rng.choice(len(x), size, replace=False))
        return gradient(model, params, x[idx], y[idx])

    G = torch.stack([grad_of(2000) for _ in range(5)]).mean(0)
    var = {B: float(torch.stack([(grad_of(B) - G).square().sum() for _ in range(draws)]).mean()) for B in batches}
    return {"n": int(G.numel()), "G2": float(G @ G), "var": var}


def errors(m: dict, B: int, K: int, C: int) -> tuple[float, float]:
    n, G2, s2 = m["n"], m["G2"], m["var"][B]
    shared = (n + 1) * (G2 + s2 / C) / K + s2 / C
    own = (n + 1) * (G2 + s2) / (K * C) + s2 / C
    return shared, own


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3000, help="the last point measured (the default job's length)")
    ap.add_argument("--draws", type=int, default=300, help="minibatch gradients per variance")
    ap.add_argument("--batches", default="8,32", help="minibatch sizes per client to measure")
    ap.add_argument("--doc-only", action="store_true", help="rewrite the docs section from the saved JSON")
    args = ap.parse_args(argv)
    if args.doc_only:
        saved = json.loads(OUT.read_text())
        write_doc(saved["rows"], saved["K"], saved["clients"], saved["draws"])
        return 0
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    points = sorted({0, min(300, args.rounds), args.rounds})
    rows, K, C = [], Config().estimator.K, Config().data.num_clients
    with tempfile.TemporaryDirectory() as tmp:
        for r in points:
            cfg = Config()  # the default job as it was measured: batch 8 (the default until 2026-12-04)
            cfg.apply_overrides([f"run.rounds={max(r, 1)}", "run.threads=1", "federation.batch_size=8"])
            if r:
                out = Path(tmp) / f"r{r}"
                cfg.run.checkpoint_every = r
                Simulation(cfg, out, progress=False).run()
                cfg = Config()
                cfg.model.init = str(out / "checkpoint.pt")
            m = measure(cfg, batches, args.draws, seed=r)
            for B in batches:
                shared, own = errors(m, B, K, C)
                rows.append({"round": r, "B": B, "n": m["n"], "G2": m["G2"], "s2_B": m["var"][B],
                             "error_shared": shared, "error_own": own, "ratio": shared / own})
                print(f"round {r:5d} B={B:3d}: |G|^2={m['G2']:.4g} s_B^2={m['var'][B]:.4g} "
                      f"error shared={shared:.4g} own={own:.4g} ratio {shared / own:.2f}", flush=True)
    write_json(OUT, {"K": K, "clients": C, "draws": args.draws, "rows": rows})
    write_doc(rows, K, C, args.draws)
    return 0


def write_doc(rows: list[dict], K: int, C: int, draws: int) -> None:
    points, batches = sorted({r["round"] for r in rows}), sorted({r["B"] for r in rows})
    at = {(r["round"], r["B"]): r for r in rows}
    last = at[(points[-1], batches[0])]
    table = markdown_table(
        ["round", "B", "‖G‖²", "s_B²", "error, shared directions", "error, own directions", "shared / own"],
        [[r["round"], r["B"], f"{r['G2']:.3g}", f"{r['s2_B']:.3g}", f"{r['error_shared']:.3g}",
          f"{r['error_own']:.3g}", f"{r['ratio']:.2f}x"] for r in rows])
    write_section(DOC, BEGIN, END, f"""{BEGIN}
### Where the estimate's error comes from (why per-client directions did not win)

Generated by `python experiments/estimate_error.py` ([results](../experiments/results/estimate_error.json)): the default
job (K={K}, {C} clients, batch 8 then) measured with autograd at rounds {", ".join(f"{p:,}" for p in points)} (round 0 = its
initial weights); ‖G‖² is the full training gradient's squared norm, s_B² one client's B-sample minibatch gradient
variance ({draws} draws), and the error
columns the expected squared error of the round's estimate (formulas in the script's docstring) with the round's K
directions shared by all clients (baffle) or drawn by each client (C x K directions for the same uploads).

{table}

Read: at batch {batches[0]} per-client directions would cut the error {at[(points[0], batches[0])]['ratio']:.1f}x at the
start, but only {at[(points[1], batches[0])]['ratio']:.2f}x at round {points[1]:,} and {last['ratio']:.2f}x at round
{points[-1]:,}, which is why the oracle screen above found them no better, while they would cost the fused engine
(clients no longer share perturbed weights) and secure aggregation (the scalars no longer share directions, so they
cannot be summed). At round {points[-1]:,} s_B² / C is {last['s2_B'] / C / max(last['G2'], 1e-30):.0f}x ‖G‖²: the
minibatch term dominates the error, and it falls like 1/B: more samples per pass are what shrinks the error there (docs/results.md, "The default job
against its minibatch per pass").
{END}""", title="# Experiments\n")


if __name__ == "__main__":
    raise SystemExit(main())
