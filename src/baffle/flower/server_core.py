"""Server-side round logic of the Flower app, independent of which Flower workflow drives it.

Both drivers (the Message-API strategy in ``strategy.py`` and the SecAgg+ legacy strategy in
``secure.py``) call the same four things: ``refresh_nodes`` (which node holds which partition),
``sample`` (the same clients ``baffle run`` would pick, by partition id), ``plan_payload`` (what one node
receives) and ``ingest`` / ``ingest_aggregate`` (validate -> aggregate -> ``ServerStrategy`` step). All
the math is ``baffle.server.strategy.ServerStrategy``'s.

Transports. ``weights``: every plan carries the global weights. ``replay`` (DeComFL-style): a node keeps a
replica of the server (model + optimizer) in its Flower node state, so the plan carries only the
aggregated K-vectors of the rounds the replica has not applied yet, plus a SHA-256 of the weights the
replica must reach. A node whose replica disagrees answers with an error and gets weights from then on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from baffle.config import Config
from baffle.flower.config import FlowerOptions
from baffle.flower.records import Payload
from baffle.protocol.messages import Upload
from baffle.sim.factory import build_model_for, load_data
from baffle.sim.evaluate import evaluate
from baffle.sim.sampling import sample_clients
from baffle.server.ingest import RoundResult
from baffle.server.strategy import ServerStrategy

log = logging.getLogger("baffle")

NODE_INFO = "baffle.node"  # MetricRecord a node answers a query with


def weights_digest(state: dict[str, torch.Tensor]) -> bytes:
    """SHA-256 over the state dict's names, dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for k, v in state.items():
        t = v.detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.digest()


@dataclass
class Traffic:
    """Bytes of message content (see ``records.content_nbytes``), summed over nodes and rounds."""

    down_bytes: int = 0
    up_bytes: int = 0
    down_msgs: int = 0
    up_msgs: int = 0
    failures: int = 0
    rejected: int = 0
    skipped_rounds: int = 0


@dataclass
class ServerCore:
    cfg: Config
    opts: FlowerOptions
    strategy: ServerStrategy = field(init=False)
    partition_of: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    node_of: dict[int, int] = field(default_factory=dict)  # partition id -> node id
    num_partitions: int = 0
    history: dict[int, np.ndarray | None] = field(default_factory=dict)  # round -> aggregated K-vector (None: skipped)
    replica_round: dict[int, int] = field(default_factory=dict)  # node id -> round its replica is at
    weights_only: set[int] = field(default_factory=set)  # nodes whose replica failed: weights from now on
    traffic: Traffic = field(default_factory=Traffic)
    rows: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.cfg.run.threads:
            torch.set_num_threads(self.cfg.run.threads)
        _, self.test = load_data(self.cfg)
        self.strategy = ServerStrategy(build_model_for(self.cfg, self.test), self.cfg)
        self.eval_model = build_model_for(self.cfg, self.test)
        self.t0 = time.perf_counter()
        self.out = Path(self.opts.result_dir) if self.opts.result_dir else None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "metrics.jsonl").write_text("")

    # ---- nodes ----------------------------------------------------------------------------------
    def register(self, node_id: int, partition_id: int, num_partitions: int) -> None:
        if self.num_partitions and num_partitions != self.num_partitions:
            raise ValueError(f"node {node_id} says num-partitions={num_partitions}, others said {self.num_partitions}")
        if not 0 <= partition_id < num_partitions:
            raise ValueError(f"node {node_id} has partition-id {partition_id} outside [0, {num_partitions})")
        if partition_id in self.node_of and self.node_of[partition_id] != node_id:
            log.warning("partition %d moved from node %d to node %d", partition_id, self.node_of[partition_id], node_id)
            self.partition_of.pop(self.node_of[partition_id], None)
        self.num_partitions = num_partitions
        self.cfg.data.num_clients = num_partitions
        self.partition_of[node_id] = partition_id
        self.node_of[partition_id] = node_id

    def sample(self, round_idx: int) -> list[tuple[int, int]]:
        """(partition id, node id) of this round's clients: ``baffle run``'s choice, minus absent nodes."""
        picked = sample_clients(self.cfg, round_idx)
        missing = [p for p in picked if p not in self.node_of]
        if missing:
            log.warning("round %d: partitions %s have no connected node", round_idx, missing)
        return [(p, self.node_of[p]) for p in picked if p in self.node_of]

    # ---- plans ----------------------------------------------------------------------------------
    def plan_payload(self, round_idx: int, node_id: int, send_weights: bool | None = None) -> Payload:
        e, s = self.cfg.estimator, self.strategy
        config = {
            "round": round_idx,
            "sigma": float(e.sigma),
            "scheme": e.scheme,
            "batch-size": int(self.cfg.federation.batch_size),
        }
        arrays: dict[str, np.ndarray] = {"seeds": s.seeds(round_idx).astype(np.uint64)}
        replay = self.opts.transport == "replay" and node_id not in self.weights_only and not send_weights
        if not replay:
            config["transport"] = "weights"
            for k, v in s.global_weights().items():
                arrays["w/" + k] = v.numpy()
            return Payload(config, arrays)
        start = self.replica_round.get(node_id, 0)
        config["transport"] = "replay"
        config["replay-from"] = start
        config["weights-sha256"] = weights_digest(s.model.state_dict())
        skipped = []
        for r in range(start, round_idx):
            vec = self.history[r]
            if vec is None:
                skipped.append(r)
            else:
                arrays[f"h/{r}"] = vec.astype(np.float32)
        arrays["skipped"] = np.asarray(skipped, dtype=np.int64)
        return Payload(config, arrays)

    def sent(self, node_id: int, round_idx: int, nbytes: int) -> None:
        self.traffic.down_bytes += nbytes
        self.traffic.down_msgs += 1

    def node_failed(self, node_id: int, round_idx: int, reason: str) -> None:
        self.traffic.failures += 1
        log.warning("round %d: node %d (partition %s) failed: %s", round_idx, node_id, self.partition_of.get(node_id), reason)
        if "replica mismatch" in reason:
            self.weights_only.add(node_id)
        self.replica_round.pop(node_id, None)  # unknown now: replay from scratch (or weights) next time

    # ---- aggregation ----------------------------------------------------------------------------
    def ingest(self, round_idx: int, uploads: list[Upload], expected: set[int], up_bytes: int) -> RoundResult:
        """Plain mode: every node's K-vector is visible; validate, aggregate, step."""
        self.traffic.up_bytes += up_bytes
        self.traffic.up_msgs += len(uploads)
        ok, rejected = self.strategy.validate(uploads, round_idx, expected)
        self.traffic.rejected += len(rejected)
        result = RoundResult(round_idx, len(ok), rejected)
        if len(ok) < self.cfg.federation.min_clients:
            log.warning("round %d skipped: %d valid uploads < min_clients=%d", round_idx, len(ok), self.cfg.federation.min_clients)
            return self._skip(result)
        mean = self.strategy.aggregate_diffs(ok)
        self._step(round_idx, mean, result)
        for u in ok:
            self.replica_round[self.node_of[u.client_id]] = round_idx  # its replica now sits at this round
        return result

    def ingest_aggregate(self, round_idx: int, mean: np.ndarray | None, contributors: int, num_examples: int, up_bytes: int, replied: int) -> RoundResult:
        """SecAgg+ mode: only the weighted mean of the contributors' K-vectors exists on the server.

        It still passes the single validation point, as one pseudo-upload (shape, dtype, finiteness,
        magnitude); per-node checks are impossible by design.
        """
        self.traffic.up_bytes += up_bytes
        self.traffic.up_msgs += replied
        result = RoundResult(round_idx, contributors)
        if mean is None or contributors < self.cfg.federation.min_clients:
            log.warning("round %d skipped: %d contributors < min_clients=%d", round_idx, contributors, self.cfg.federation.min_clients)
            return self._skip(result)
        per_node = max(1, round(num_examples / max(1, contributors)))  # a per-node count, as validate expects
        agg = Upload(client_id=0, round=round_idx, loss_diffs=np.asarray(mean, dtype=np.float32), num_samples=per_node)
        ok, rejected = self.strategy.validate([agg], round_idx, None)
        if not ok:
            result.rejected = rejected
            self.traffic.rejected += 1
            return self._skip(result)
        self._step(round_idx, ok[0].loss_diffs, result)
        return result

    def skip_round(self, round_idx: int) -> RoundResult:
        return self._skip(RoundResult(round_idx, 0))

    def _skip(self, result: RoundResult) -> RoundResult:
        result.skipped = True
        self.traffic.skipped_rounds += 1
        self.history[result.round] = None
        return result

    def _step(self, round_idx: int, mean: np.ndarray, result: RoundResult) -> None:
        result.grad_norm = self.strategy.apply_loss_diffs(round_idx, mean)
        self.history[round_idx] = np.asarray(mean, dtype=np.float32).copy()

    # ---- evaluation and results -----------------------------------------------------------------
    def rounds_done(self) -> int:
        return len(self.history)

    def evaluate(self, rounds_done: int, force: bool = False) -> dict | None:
        if not force and rounds_done % self.cfg.run.eval_every != 0 and rounds_done != self.cfg.run.rounds:
            return None
        from baffle.client import load_weights

        load_weights(self.eval_model, self.strategy.eval_weights())
        acc, loss = evaluate(self.eval_model, self.test)
        t = self.traffic
        row = {
            "round": rounds_done,
            "test_acc": acc,
            "test_loss": loss,
            "down_bytes": t.down_bytes,
            "up_bytes": t.up_bytes,
            "down_bytes_per_msg": t.down_bytes / max(1, t.down_msgs),
            "up_bytes_per_msg": t.up_bytes / max(1, t.up_msgs),
            "failures": t.failures,
            "rejected": t.rejected,
            "skipped_rounds": t.skipped_rounds,
            "wall_s": round(time.perf_counter() - self.t0, 2),
        }
        self.rows.append(row)
        if self.out is not None:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    def finish(self, mode: str) -> dict:
        last = self.rows[-1] if self.rows else self.evaluate(self.rounds_done(), force=True)
        t = self.traffic
        result = {
            "mode": mode,
            "transport": self.opts.transport,
            "secure": self.opts.secure,
            "rounds": self.cfg.run.rounds,
            "rounds_done": self.rounds_done(),
            "num_partitions": self.num_partitions,
            "final_test_acc": last["test_acc"] if last else None,
            "best_test_acc": max((r["test_acc"] for r in self.rows), default=None),
            "final_test_loss": last["test_loss"] if last else None,
            "down_bytes_per_msg": t.down_bytes / max(1, t.down_msgs),
            "up_bytes_per_msg": t.up_bytes / max(1, t.up_msgs),
            "messages_down": t.down_msgs,
            "messages_up": t.up_msgs,
            "failures": t.failures,
            "rejected": t.rejected,
            "skipped_rounds": t.skipped_rounds,
            "weights_sha256": weights_digest(self.strategy.model.state_dict()).hex(),
            "wall_s": round(time.perf_counter() - self.t0, 2),
        }
        if self.out is not None:
            tmp = self.out / "result.json.tmp"
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            tmp.replace(self.out / "result.json")
        return result
