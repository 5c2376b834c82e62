"""Per-round time of the Flower app at 10 / 100 / 1,000 nodes and where it goes: Flower's own messaging vs
baffle's per-node work vs an in-process client step.

    nice -n 10 .venv/bin/python scripts/flower_overhead.py [--nodes 10 100 1000] [--rounds 4 3 2]
                                                          [--out docs/flower] [--force]

What runs: the real ServerApp and ClientApp objects on the in-memory grid (``baffle.flower.inmemory``:
every message serialized and parsed with Flower's protobuf serde, the ClientApp called through Flower's
``ClientApp.__call__`` with a persistent Context per node), the app's defaults (the default recipe:
lenet_small, 14x14 MNIST, K = 20, batch 32), every node sampled every round, ``run-threads = 1``, one process.
Not included: Ray's actor scheduling (``flwr run`` simulation) and the network (deployment). Each timed
function is wrapped (monkeypatched) in this process; the buckets:

* Flower: serde (``inmemory._copy``, down and up), the ClientApp dispatch (``ClientApp.__call__`` minus the
  baffle handler inside it), and the rest of the round not spent in baffle code (``Strategy.start``'s loop,
  message objects, the grid).
* baffle, per node, on the node: building the node (``client_app._node``: run config, partition file, model,
  engine, client), ``Node.handle`` (weights into the model, then ``Client.step``), the record codec and the
  node state.
* baffle, per node, on the server: the plan (``ServerCore.plan_payload`` + ``records.to_records``) and
  decoding the reply.
* baffle, per round, on the server: ``ServerCore.ingest`` (validate, aggregate, reconstruct, optimizer step).
* In-process reference: ``Client.step`` as ``baffle run`` calls it (one model, warm engine), unfused
  (``estimator.fuse_clients = false``) and the fused per-client cost of the default.

The goal (issue 18): at 1,000 nodes, baffle's per-node work <= 2x an in-process client step. Refuses to
run while the 1-minute load average is >= 2.5 (``--force`` runs anyway; the load is recorded either way).
Writes ``overhead.json`` and its section of docs/flower.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "flower.md"
BEGIN = "<!-- BEGIN flower_overhead.py -->"
END = "<!-- END flower_overhead.py -->"

B: dict[str, float] = defaultdict(float)  # the current round's buckets (seconds)
N: dict[str, int] = defaultdict(int)  # calls
ROWS: list[dict] = []  # one row of buckets per finished round


def timed(owner, name: str, bucket: str) -> None:
    """Wrap ``owner.name`` so that each call adds its wall time to ``B[bucket]``."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            B[bucket] += time.perf_counter() - t
            N[bucket] += 1

    setattr(owner, name, wrapper)


def instrument() -> None:
    """Wrap every timed function once (for the whole process)."""
    from flwr.clientapp import ClientApp

    import baffle.client
    from baffle.flower import client_app, inmemory, node, records, server_core, strategy

    for owner, name, bucket in [
        (ClientApp, "__call__", "app_call"),
        (inmemory, "_copy", "flower_serde"),
        (client_app, "_node", "node_build"),
        (node, "partition_data", "node_build.data"),
        (node, "build_model_for", "node_build.model"),
        (node, "engine_for", "node_build.engine"),
        (node.Node, "handle", "node_handle"),
        (baffle.client.Client, "step", "client_step"),
        (records, "from_records", "node_codec"),
        (records, "upload_to_records", "node_codec"),
        (client_app, "_save", "node_state"),
        (server_core.ServerCore, "plan_payload", "server_plan"),
        (records, "to_records", "server_plan"),
        (records, "upload_from_records", "server_decode"),
        (records, "content_nbytes", "server_decode"),
        (server_core.ServerCore, "ingest", "server_ingest"),
        (server_core.ServerCore, "evaluate", "server_evaluate"),
    ]:
        timed(owner, name, bucket)

    real_configure = strategy.BaffleStrategy.configure_train
    real_evaluate_fn = strategy.BaffleStrategy.evaluate_fn

    def configure(self, server_round, *a, **k):
        B.clear()
        N.clear()
        B["t0"] = time.perf_counter()
        return real_configure(self, server_round, *a, **k)

    def evaluate_fn(self, server_round, arrays):
        out = real_evaluate_fn(self, server_round, arrays)
        if server_round > 0:
            row = dict(B)
            row["round_s"] = time.perf_counter() - row.pop("t0")
            row["messages"] = N["client_step"]
            ROWS.append(row)
        return out

    strategy.BaffleStrategy.configure_train = configure
    strategy.BaffleStrategy.evaluate_fn = evaluate_fn


def split(row: dict) -> dict:
    """A round's seconds by owner (exclusive), evaluation left out."""
    row = defaultdict(float, row)  # a bucket no call fell into this round is 0
    node_baffle = row["node_build"] + row["node_handle"] + row["node_codec"] + row["node_state"]
    server_node = row["server_plan"] + row["server_decode"]
    round_s = row["round_s"] - row["server_evaluate"]
    flower_dispatch = row["app_call"] - node_baffle
    flower_rest = round_s - row["flower_serde"] - row["app_call"] - server_node - row["server_ingest"]
    return {
        "round_s": round_s,
        "messages": row["messages"],
        "flower_serde_s": row["flower_serde"],
        "flower_dispatch_s": flower_dispatch,
        "flower_rest_s": flower_rest,
        "flower_s": row["flower_serde"] + flower_dispatch + flower_rest,
        "baffle_node_s": node_baffle,
        "node_build_s": row["node_build"],
        "node_build_data_s": row["node_build.data"],
        "node_build_model_s": row["node_build.model"],
        "node_build_engine_s": row["node_build.engine"],
        "node_step_s": row["client_step"],
        "node_weights_s": row["node_handle"] - row["client_step"],
        "node_codec_state_s": row["node_codec"] + row["node_state"],
        "baffle_server_per_node_s": server_node,
        "baffle_server_round_s": row["server_ingest"],
        "evaluate_s": row["server_evaluate"],
    }


def prewarm_partitions(rc: dict, nodes: int) -> None:
    """Write every node's partition file once (one dataset load), so round times are not cold-cache times."""
    from baffle.flower import node
    from baffle.flower.config import parse_run_config

    cfg, opts = parse_run_config(rc)
    cache = {}
    real = node.load_train
    node.load_train = lambda c: cache["t"] if "t" in cache else cache.setdefault("t", real(c))
    try:
        for pid in range(nodes):
            node.partition_data(cfg, pid, nodes, opts.flwr_partitioner)
    finally:
        node.load_train = real


def flower_size(nodes: int, rounds: int, transport: str) -> dict:
    from baffle.flower.inmemory import run_inmemory

    rc = run_config(rounds, transport)
    prewarm_partitions(rc, nodes)
    ROWS.clear()
    t = time.perf_counter()
    run_inmemory(rc, nodes)
    wall = time.perf_counter() - t
    per_round = [split(r) for r in ROWS]
    return {"nodes": nodes, "rounds": rounds, "transport": transport, "wall_s": wall, "per_round": per_round}


def run_config(rounds: int, transport: str) -> dict:
    import tomllib

    rc = dict(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    rc.update({"num-server-rounds": rounds, "run-eval-every": rounds, "run-checkpoint-every": 0, "run-threads": 1,
               "fraction-train": 1.0, "transport": transport, "result-dir": "", "min-nodes": 1})
    return rc


def inprocess(steps: int) -> dict:
    """``Client.step`` as ``baffle run`` runs it (the same config, 10 clients): unfused and fused per client."""
    from baffle.flower.config import parse_run_config
    from baffle.sim.factory import build
    from baffle.sim.rounds import RoundRunner

    out = {}
    for fused in (False, True):
        cfg, _ = parse_run_config(run_config(steps, "weights"))
        cfg.data.num_clients = 10
        cfg.estimator.fuse_clients = fused
        fed = build(cfg)
        runner = RoundRunner(fed)
        runner.run_round(0)  # warm-up (engine program, caches)
        t = time.perf_counter()
        for r in range(1, steps + 1):
            runner.run_round(r)
        round_s = (time.perf_counter() - t) / steps
        out["fused" if fused else "unfused"] = {"round_s": round_s, "per_client_s": round_s / 10}
    return out


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def share(size: dict, key: str) -> float:
    return mean(size["per_round"], key) / mean(size["per_round"], "round_s")


def per_node(size: dict) -> float:
    """Seconds of baffle code per message: on the node plus the node's share on the server."""
    pr = size["per_round"]
    return (mean(pr, "baffle_node_s") + mean(pr, "baffle_server_per_node_s")) / size["nodes"]


def section(res: dict) -> str:
    from baffle.records.tables import markdown_table

    refs = [res["inprocess"], res.get("inprocess_after", res["inprocess"])]
    step = sum(r["unfused"]["per_client_s"] for r in refs) / len(refs)  # before and after the Flower runs
    fused = sum(r["fused"]["per_client_s"] for r in refs) / len(refs)
    head = ["transport", "nodes", "round (s)", "Flower (s)", "serde", "ClientApp dispatch", "rest of Flower",
            "baffle on nodes (s)", "baffle on server, per node (s)", "server step (s)", "baffle per node (ms)",
            "x in-process step"]
    rows, detail = [], []
    for s in res["sizes"]:
        pr, n, t = s["per_round"], s["nodes"], s["transport"]
        rows.append([t, n, f"{mean(pr, 'round_s'):.2f}", f"{mean(pr, 'flower_s'):.2f}", f"{mean(pr, 'flower_serde_s'):.2f}",
                     f"{mean(pr, 'flower_dispatch_s'):.2f}", f"{mean(pr, 'flower_rest_s'):.2f}",
                     f"{mean(pr, 'baffle_node_s'):.2f}", f"{mean(pr, 'baffle_server_per_node_s'):.2f}",
                     f"{mean(pr, 'baffle_server_round_s'):.3f}", f"{per_node(s) * 1e3:.2f}", f"{per_node(s) / step:.1f}x"])
        m = lambda k: mean(pr, k) / n * 1e3  # noqa: E731  ms per node
        detail.append([t, n, f"{m('node_build_s'):.2f}", f"{m('node_build_data_s'):.2f}", f"{m('node_build_model_s'):.2f}",
                       f"{m('node_build_engine_s'):.2f}", f"{m('node_weights_s'):.2f}", f"{m('node_step_s'):.2f}",
                       f"{m('node_codec_state_s'):.2f}", f"{m('baffle_server_per_node_s'):.2f}"])
    goal_t = res["sizes"][0]["transport"]
    big = [s for s in res["sizes"] if s["transport"] == goal_t][-1]
    ratio = per_node(big) / step
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    lines = [
        BEGIN,
        "## Per-round time and its split (simulation, 10 / 100 / 1,000 nodes)",
        "",
        "`scripts/flower_overhead.py` (output `docs/flower/overhead.json`): the app defaults (the default recipe: "
        f"lenet_small, 14x14 MNIST, K = 20, batch {run_config(1, 'weights')['federation-batch-size']}), every node sampled every round, one process, 1 thread, on the "
        "in-memory grid (Flower's serde and `ClientApp` dispatch; no Ray, no network); means over "
        f"{', '.join(str(s['rounds']) for s in res['sizes'] if s['transport'] == goal_t)} rounds per size; evaluation "
        f"left out; {res['total_s']:.0f} s in all. Load average before the run: {fmt(res['load_before'])}, after: "
        f"{fmt(res['load_after'])} (2 shared cores).",
        "",
        markdown_table(head, rows),
        "",
        "Where baffle's per-node time goes (ms per node per round):",
        "",
        markdown_table(["transport", "nodes", "node build", "of which: partition file", "model", "engine",
                        "weights into model", "Client.step", "record codec + node state", "server: plan + decode"], detail),
        "",
        "\"weights into model\" in `replay` (and `auto`, the default, which replays here since every node is "
        "sampled every round): the first node of a round in a process rebuilds its server replica from its node "
        "state, replays the aggregated K-vectors since its last round (a reconstruction and an optimizer step each), "
        "checks the weights' SHA-256 and stores the replica again; the other nodes the process serves that round "
        "reuse the replica it reached (same round, same SHA-256) instead of redoing the step.",
        "",
        f"In-process reference (`baffle run`, same config, 10 clients, warm; mean of a measurement before and one after "
        f"the Flower runs): `Client.step` {step * 1e3:.2f} ms unfused, {fused * 1e3:.2f} ms per client fused (the "
        "default, `estimator.fuse_clients = true`). \"baffle per node\" is the baffle code one message costs, on the "
        "node and on the server; \"x in-process step\" divides it by the unfused step.",
        "",
        f"Goal (baffle's per-node work <= 2x an in-process client step at {big['nodes']:,} nodes, transport "
        f"`{goal_t}`): **{'met' if ratio <= 2 else 'not met'}** ({ratio:.1f}x). Where that round goes: "
        f"{share(big, 'flower_s'):.0%} Flower, {share(big, 'baffle_node_s'):.0%} baffle on the nodes "
        f"({share(big, 'node_step_s'):.0%} `Client.step` itself), {share(big, 'baffle_server_per_node_s'):.0%} "
        f"baffle's per-node work on the server, {share(big, 'baffle_server_round_s'):.0%} the server's step.",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--rounds", type=int, nargs="+", default=[4, 3, 2])
    p.add_argument("--transports", nargs="+", default=["auto", "weights", "replay"], choices=["auto", "weights", "replay"],
                   help="each size runs once per transport; the goal is judged on the first")
    p.add_argument("--out", default=str(REPO / "docs" / "flower"))
    p.add_argument("--doc", default=str(DOC))
    p.add_argument("--force", action="store_true", help="run even when the load average is >= 2.5")
    a = p.parse_args(argv)
    if len(a.rounds) != len(a.nodes):
        p.error("--rounds needs one count per --nodes size")
    load = os.getloadavg()
    if load[0] >= 2.5 and not a.force:
        print(f"load average {load[0]:.2f} >= 2.5: timings would be skewed; retry later (or --force)", file=sys.stderr)
        return 2
    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("baffle").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)
    from baffle.records.results import write_json, write_section

    t0 = time.perf_counter()
    res = {"load_before": list(load), "inprocess": inprocess(steps=20), "sizes": []}
    instrument()
    for transport in a.transports:
        for nodes, rounds in zip(a.nodes, a.rounds):
            with contextlib.redirect_stderr(open(os.devnull, "w")):
                res["sizes"].append(flower_size(nodes, rounds, transport))
            s = res["sizes"][-1]
            print(f"{transport}, {nodes} nodes: {mean(s['per_round'], 'round_s'):.2f} s/round, Flower "
                  f"{mean(s['per_round'], 'flower_s'):.2f} s, baffle on nodes {mean(s['per_round'], 'baffle_node_s'):.2f} s "
                  f"(wall {s['wall_s']:.0f} s)", flush=True)
    res["inprocess_after"] = inprocess(steps=20)  # the reference again: the load may have moved meanwhile
    res["load_after"] = list(os.getloadavg())
    res["total_s"] = time.perf_counter() - t0
    out = Path(a.out)
    write_json(out / "overhead.json", res, indent=2)
    text = section(res)
    write_section(a.doc, BEGIN, END, text, title="")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
