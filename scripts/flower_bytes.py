"""Bytes per node per round on Flower: baffle (weights / replay transport, SecAgg+) vs Flower FedAvg.

    python scripts/flower_bytes.py [--k 100] [--nodes 10] [--rounds 3] [--out docs/flower]

baffle rows are measured: the real ServerApp and ClientApp run on the in-memory grid
(``baffle.flower.inmemory``), which serializes every message with Flower's serde and counts the bytes of
its content (``records.content_nbytes``: records, arrays and array chunks; not the ~100-byte metadata
nor gRPC/HTTP framing). Rounds 1 and the last are reported (replay's downlink grows with the rounds a
node missed; with full participation it is one K-vector per round). The FedAvg row is the content of the
messages Flower's own ``FedAvg`` (Message API) exchanges for the same model: an ArrayRecord of the
weights plus a ConfigRecord down, an ArrayRecord plus a MetricRecord up, counted the same way.
The model is LeNet (MNIST shape: 1x28x28, 10 classes); its parameter count does not depend on the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fedavg_bytes(model) -> tuple[int, int]:
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

    from baffle.flower.records import content_nbytes

    arrays = ArrayRecord(model.state_dict())
    down = RecordDict({"arrays": arrays, "config": ConfigRecord({"lr": 0.01, "server-round": 1})})
    up = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": 32, "train_loss": 0.5})})
    return content_nbytes(down), content_nbytes(up)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--nodes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "docs" / "flower"))
    a = p.parse_args(argv)

    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    from baffle.flower.config import parse_run_config
    from baffle.flower.inmemory import run_inmemory
    from baffle.models import num_parameters
    from baffle.server import build_model_for, load_data

    from flower_docs_task import docs_base  # the task docs/flower/ was measured on

    base = docs_base(**{"data-name": "synthetic", "data-train-subset": 20 * a.nodes * 32, "data-test-subset": 100,
                        "estimator-k": a.k, "num-server-rounds": a.rounds, "run-eval-every": a.rounds,
                        "estimator-engine": "loop", "result-dir": ""})
    cfg, _ = parse_run_config(base)
    model = build_model_for(cfg, load_data(cfg)[1])
    rows = []
    for label, extra in (("baffle, weights transport", {}), ("baffle, replay transport", {"transport": "replay"}),
                         ("baffle, SecAgg+ (4 message exchanges per round)", {"secure": True})):
        grid = run_inmemory(dict(base, **extra), a.nodes, count_bytes=True)
        per = defaultdict(lambda: [0, 0])  # (group id) -> [down, up] summed over nodes, train messages only
        for direction, _nid, group, mtype, nbytes in grid.traffic:
            if mtype != "train":
                continue
            per[group][0 if direction == "down" else 1] += nbytes
        first, last = per["1"], per[str(a.rounds)]
        rows.append({"mode": label, "round1_down": first[0] / a.nodes, "round1_up": first[1] / a.nodes,
                     "last_down": last[0] / a.nodes, "last_up": last[1] / a.nodes})
    d, u = fedavg_bytes(model)
    rows.append({"mode": "Flower FedAvg (same model)", "round1_down": d, "round1_up": u, "last_down": d, "last_up": u})
    n = num_parameters(model)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bytes.json").write_text(json.dumps({"K": a.k, "nodes": a.nodes, "rounds": a.rounds, "model": "lenet",
                                                "parameters": n, "rows": rows}, indent=2) + "\n")
    lines = [f"LeNet ({n:,} parameters), K = {a.k}, {a.nodes} nodes, full participation; bytes of message content per node per round.",
             "", f"| mode | down, round 1 | up, round 1 | down, round {a.rounds} | up, round {a.rounds} |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['round1_down']:,.0f} | {r['round1_up']:,.0f} | {r['last_down']:,.0f} | {r['last_up']:,.0f} |")
    (out / "bytes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
