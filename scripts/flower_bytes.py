"""Bytes per node per round on Flower: baffle (auto / weights / replay transport, SecAgg+) vs Flower FedAvg.

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
import sys
from collections import defaultdict
from pathlib import Path

from baffle.records.results import write_json, write_text
from baffle.records.tables import markdown_table

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
    from baffle.sim.factory import build_model_for, load_data

    from flower_docs_task import docs_base  # the task docs/flower/ was measured on

    base = docs_base(**{"data-name": "synthetic", "data-train-subset": 20 * a.nodes * 32, "data-test-subset": 100,
                        "estimator-k": a.k, "num-server-rounds": a.rounds, "run-eval-every": a.rounds,
                        "estimator-engine": "loop", "result-dir": ""})
    cfg, _ = parse_run_config(base)
    model = build_model_for(cfg, load_data(cfg)[1])
    rows = []
    for label, extra in (("baffle, auto transport (the default)", {"transport": "auto"}),
                         ("baffle, weights transport", {"transport": "weights"}), ("baffle, replay transport", {"transport": "replay"}),
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
    result = {"K": a.k, "nodes": a.nodes, "rounds": a.rounds, "model": "lenet", "parameters": num_parameters(model), "rows": rows}
    out = Path(a.out)
    write_json(out / "bytes.json", result, indent=2)
    text = bytes_md(result)
    write_text(out / "bytes.md", text)
    print(text, end="")
    return 0


def bytes_md(result: dict) -> str:
    """bytes.md from bytes.json."""
    rounds = result["rounds"]
    head = (f"LeNet ({result['parameters']:,} parameters), K = {result['K']}, {result['nodes']} nodes, full participation; "
            "bytes of message content per node per round.")
    table = markdown_table(
        ["mode", "down, round 1", "up, round 1", f"down, round {rounds}", f"up, round {rounds}"],
        [[r["mode"]] + [f"{r[k]:,.0f}" for k in ("round1_down", "round1_up", "last_down", "last_up")] for r in result["rows"]],
        align=[None, "right", "right", "right", "right"],
    )
    return f"{head}\n\n{table}\n"


if __name__ == "__main__":
    sys.exit(main())
