"""Server-side round logic of the Flower app, independent of which Flower workflow drives it.

Both drivers (the Message-API strategy in ``strategy.py`` and the SecAgg+ legacy strategy in
``secure.py``) call the same four things: ``refresh_nodes`` (which node holds which partition),
``sample`` (the same clients ``baffle run`` would pick, by partition id), ``plan_payload`` (what one node
receives) and ``ingest`` / ``ingest_aggregate`` (validate -> aggregate -> ``ServerStrategy`` step). All
the math is ``baffle.server.strategy.ServerStrategy``'s.

Transports. ``weights``: every plan carries the global weights (the tensors that change: the whole model, or
only the trainable subset plus the fingerprint of the frozen rest, ``baffle.plan_state``). ``replay`` (DeComFL-style): a node keeps a
replica of the server (model + optimizer) in its Flower node state, so the plan carries only the
aggregated K-vectors of the rounds the replica has not applied yet, plus a SHA-256 of the weights the
replica must reach (``replica_digest``). A node whose replica disagrees answers with an error and gets weights from then on.
``auto`` (the default): replay, except that a node whose replica lags by more K-vectors than the server
state weighs (a late joiner, a node rarely sampled) gets that state once (``state``) and replays from it.

Run dir and resume (``baffle.flower.resume``): checkpoints every ``run.checkpoint_every`` rounds and at the
end, in ``baffle run``'s format; ``resume = true`` restores the server state, the round history and each
partition's step count, and both drivers keep counting rounds from 1 while ``start_round`` says where
the run really is (``server_app.ResumableStrategy`` adds it).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from baffle.client import load_weights
from baffle.config import Config
from baffle.flower.config import FlowerOptions
from baffle.flower.records import Payload, encode_arrays
from baffle.methods import download_bytes, per_round_costs
from baffle.plan_state import replica_digest, state_sha256 as weights_digest  # result.json's weights_sha256
from baffle.protocol.messages import Upload
from baffle.protocol.schemes import forward_passes
from baffle.records import checkpoint
from baffle.records.checkpoint import atomic_write_bytes
from baffle.flower import resume as rundir
from baffle.records.metrics import (Counters, append_metrics, make_summary, metrics_row, privacy_metrics, read_metrics,
                                    truncate_metrics)
from baffle.server.ingest import RoundResult, ingest_aggregate, ingest_uploads
from baffle.server.strategy import ServerStrategy
from baffle.sim.evaluate import HeadCache, evaluate, probe_loss
from baffle.engine import engine_for
from baffle.pruning import magnitude_mask as initial_mask
from baffle.sim.factory import attach_trust, build_model_for, load_data, train_probe
from baffle.sim.loop import CHECKPOINT_NAME
from baffle.privacy import PrivacyLedger
from baffle.sim.rounds import make_ledger
from baffle.sim.sampling import sample_clients

log = logging.getLogger("baffle")

NODE_INFO = "baffle.node"  # MetricRecord a node answers a query with
REPLAY_STATE_RATIO = 1.0  # auto transport: replay while the missing K-vectors weigh <= this x the server state


@dataclass
class Traffic:
    """Bytes of message content (see ``records.content_nbytes``), summed over nodes and rounds."""

    down_bytes: int = 0
    up_bytes: int = 0
    down_msgs: int = 0
    up_msgs: int = 0
    failures: int = 0
    plans_weights: int = 0  # plans by what they carried (auto transport mixes them)
    plans_replay: int = 0
    plans_state: int = 0


@dataclass
class ServerCore:
    cfg: Config
    opts: FlowerOptions
    strategy: ServerStrategy = field(init=False)
    partition_of: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    node_of: dict[int, int] = field(default_factory=dict)  # partition id -> node id
    refused: dict[int, str] = field(default_factory=dict)  # node id -> why (other baffle/noise spec: flower.versions)
    num_partitions: int = 0
    history: dict[int, np.ndarray | None] = field(default_factory=dict)  # round -> aggregated K-vector (None: skipped)
    replica_round: dict[int, int] = field(default_factory=dict)  # node id -> round its replica is at
    weights_only: set[int] = field(default_factory=set)  # nodes whose replica failed: weights from now on
    traffic: Traffic = field(default_factory=Traffic)
    rows: list[dict] = field(default_factory=list)
    start_round: int = 0  # rounds done before this ServerApp started (resume)
    client_steps: dict[int, int] = field(default_factory=dict)  # partition -> minibatches its node drew (checkpointed)
    resync: set[int] = field(default_factory=set)  # partitions whose (new) node must be told its step count
    stepping: dict[int, int] = field(default_factory=dict)  # node id -> round of the plan it was last sent
    driver_metrics: dict[str, int] = field(default_factory=dict)  # a driver's counters (SecAgg+: retries, failed nodes): every row
    driver_record: dict[str, Any] = field(default_factory=dict)  # a driver's own record (SecAgg+: per round): result.json

    def __post_init__(self) -> None:
        if self.cfg.run.threads:
            torch.set_num_threads(self.cfg.run.threads)
        train, self.test = load_data(self.cfg)
        self.strategy = ServerStrategy(build_model_for(self.cfg, self.test), self.cfg)
        if self.cfg.model.prune > 0:  # as the simulator: a fixed mask from the initial weights (nodes rebuild it)
            self.strategy.set_mask(initial_mask(self.strategy.params, self.cfg.model.prune))
        e = self.cfg.estimator  # fltrust: the server's own root-batch K-vector, computed as a client would
        attach_trust(self.cfg, self.strategy, train, engine_for(e, self.strategy.mask))
        self.eval_model = build_model_for(self.cfg, self.test)
        # the train_loss metric scores the training samples `baffle run` scores (the server loads the data set
        # for its model and fltrust anyway); data-eval-train-samples = 0 turns it off, as in a real federation
        self.train_probe = train_probe(self.cfg, train)
        # a head-only text run evaluates its frozen encoder's outputs once, as `baffle run` does (exact)
        self.head_cache = HeadCache(self.strategy.state_names)
        self.t0 = time.perf_counter()
        self.counters = Counters()
        self.plan_bytes = download_bytes(self.cfg, self.strategy.plan_nbytes())  # per plan, as baffle run counts
        self.last: RoundResult | None = None
        self.ledger: PrivacyLedger | None = None  # made once the number of partitions is known
        self.wall0 = 0.0  # wall time of the run before a resume
        self._weights: tuple[int, dict, dict] | None = None  # (round, plan arrays, their Flower encoding)
        self._state: tuple[int, np.ndarray] | None = None  # (round, the training state as bytes): auto transport
        self._digest: tuple[int, bytes] | None = None  # (round, replica_digest of the model): one hash per round
        # checked before waiting for nodes: a run dir that cannot be used fails at once
        self.out = rundir.prepare_out(self.opts.result_dir, self.opts.resume, self.opts.overwrite)

    def begin(self) -> None:
        """Once the nodes (so the number of partitions) are known: start the run dir, or resume from it."""
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temps(self.out)  # debris of a writer killed mid-write
        state = rundir.load_for_resume(self.out, self.cfg) if self.opts.resume else None
        if state is not None:
            self.restore(state)
        elif self.opts.resume:
            truncate_metrics(self.out, 0)  # killed before its first checkpoint: start over (rundir's rule)
        else:
            (self.out / "metrics.jsonl").write_text("")
        atomic_write_bytes(self.out / "config.toml", self.cfg.to_toml().encode())

    def checkpoint_state(self) -> dict:
        """``baffle run``'s checkpoint keys (no per-client ``clients``) plus what a Flower run needs to go on."""
        done = self.rounds_done()
        led = self.ledger
        return {
            "round": done,
            "server": self.strategy.state_dict(),
            "counters": self.counters.__dict__.copy(),
            "config": self.cfg.to_dict(),
            rundir.FLOWER_KEY: {
                "history": rundir.pack_history(self.history, done, self.strategy.upload_length),
                "client_steps": np.asarray([self.client_steps.get(p, 0) for p in range(self.num_partitions)], dtype=np.int64),
                "traffic": self.traffic.__dict__.copy(),
                "ledger": None if led is None else {"rounds": led.rounds, "participations": led.participations.copy()},
            },
        }

    def save_checkpoint(self) -> None:
        if self.out is not None:
            checkpoint.save(self.out / CHECKPOINT_NAME, self.checkpoint_state())

    def restore(self, state: dict) -> None:
        """Continue from ``checkpoint_state``'s dict (already checked against the run config)."""
        done, f = state["round"], state[rundir.FLOWER_KEY]
        self.strategy.load_state_dict(state["server"])
        self._weights = self._state = self._digest = None
        counters = dict(state["counters"])
        self.wall0 = counters["wall_s"]
        self.history = rundir.unpack_history(f["history"], done, self.strategy.upload_length)
        self.client_steps = {p: int(n) for p, n in enumerate(np.asarray(f["client_steps"]))}
        self.resync = set(range(self.num_partitions))
        self.traffic = Traffic(**f["traffic"])
        if "download_bytes" not in counters:  # written before bytes down were counted: one plan per train message sent
            counters["download_bytes"] = self.plan_bytes * self.traffic.down_msgs
        self.counters = Counters(**counters)
        if f["ledger"] is not None:
            self.ledger = make_ledger(self.cfg)
            self.ledger.rounds = int(f["ledger"]["rounds"])
            self.ledger.participations = np.asarray(f["ledger"]["participations"], dtype=np.int64).copy()
        self.start_round = done
        truncate_metrics(self.out, done)  # rows after the checkpoint are redone
        self.rows = read_metrics(self.out)
        log.info("resuming %s at round %d of %d", self.out, done, self.cfg.run.rounds)

    # ---- nodes ----------------------------------------------------------------------------------
    def register(self, node_id: int, partition_id: int, num_partitions: int) -> None:
        if self.num_partitions and num_partitions != self.num_partitions:
            raise ValueError(f"node {node_id} says num-partitions={num_partitions}, others said {self.num_partitions}")
        if not 0 <= partition_id < num_partitions:
            raise ValueError(f"node {node_id} has partition-id {partition_id} outside [0, {num_partitions})")
        if partition_id in self.node_of and self.node_of[partition_id] != node_id:
            log.warning("partition %d moved from node %d to node %d", partition_id, self.node_of[partition_id], node_id)
            self.partition_of.pop(self.node_of[partition_id], None)
            self.resync.add(partition_id)  # its new node starts with empty node state: tell it its step count
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
            "noise": e.noise,
        }
        pid = self.partition_of.get(node_id)
        if pid in self.resync:  # a resumed run: the node's state is new, tell it where its sampler is
            config["client-steps"] = self.client_steps.get(pid, 0)
        arrays: dict[str, np.ndarray] = {"seeds": s.seeds(round_idx).astype(np.uint64)}
        kind = self._transport_for(round_idx, node_id, send_weights)
        setattr(self.traffic, f"plans_{kind}", getattr(self.traffic, f"plans_{kind}") + 1)
        if kind == "weights":
            config["transport"] = "weights"
            weights = self._round_weights(round_idx)
            arrays.update(weights[0])
            if (frozen := s.frozen_sha256()) is not None:  # a subset trains: the node checks its frozen part
                config["frozen-sha256"] = frozen
            return Payload(config, arrays, dict(weights[1]))
        config["weights-sha256"] = self._round_digest(round_idx)
        if kind == "state":
            config["transport"] = "state"
            arrays["state"] = self._round_state(round_idx)
            return Payload(config, arrays)
        start = self.replica_round.get(node_id, 0)
        config["transport"] = "replay"
        config["replay-from"] = start
        skipped = []
        for r in range(start, round_idx):
            vec = self.history[r]
            if vec is None:
                skipped.append(r)
            else:
                arrays[f"h/{r}"] = vec.astype(np.float32)
        arrays["skipped"] = np.asarray(skipped, dtype=np.int64)
        return Payload(config, arrays)

    def _transport_for(self, round_idx: int, node_id: int, send_weights: bool | None) -> str:
        """weights | replay | state for one plan. ``auto`` replays while the K-vectors the node lacks are
        fewer bytes than the server state (model + optimizer), and otherwise sends that state once, from
        which the node's replica goes on; a node whose replica ever disagreed gets weights (as in replay)."""
        t = self.opts.transport
        if t == "weights" or send_weights or node_id in self.weights_only:
            return "weights"
        if t == "replay":
            return "replay"
        replay_bytes = (round_idx - self.replica_round.get(node_id, 0)) * 4 * self.strategy.upload_length
        bound = REPLAY_STATE_RATIO * self.strategy.plan_nbytes()  # the plan's weights alone bound the state from
        if replay_bytes <= bound or replay_bytes <= REPLAY_STATE_RATIO * self._round_state(round_idx).nbytes:
            return "replay"  # below: most plans never serialize the state
        return "state"

    def _round_digest(self, round_idx: int) -> bytes:
        """``replica_digest`` of the global model, computed once per round for all nodes (the model changes
        only in ``_count``, which drops it)."""
        if self._digest is None or self._digest[0] != round_idx:
            self._digest = (round_idx, replica_digest(self.strategy.model, self.strategy.plan_names))
        return self._digest[1]

    def _round_state(self, round_idx: int) -> np.ndarray:
        """The server's training state (the plan's tensors of the model: all of it, or the trainable subset,
        whose frozen rest the node built itself; and the optimizer, as the node replica holds it: no EMA, no
        trust scores) as a ``torch.save`` byte array the node reads with ``weights_only=True``; once per round."""
        if self._state is None or self._state[0] != round_idx:
            # the optimizer serialized as it lives (nothing changes it while torch.save runs: the deep copy
            # ``strategy.state_dict`` makes for a checkpoint is not needed); the plan's tensors cloned, so that
            # torch.save writes their own bytes and never a larger storage they might view
            own = self.strategy.model.state_dict()
            model = {k: own[k].clone() for k in self.strategy.plan_names}
            state = {"model": model, "optimizer": self.strategy.optimizer.state_dict(), "ema": None}
            buf = io.BytesIO()
            torch.save(state, buf)
            self._state = (round_idx, np.frombuffer(buf.getvalue(), dtype=np.uint8))
        return self._state[1]

    def _round_weights(self, round_idx: int) -> tuple[dict[str, np.ndarray], dict]:
        """The global weights as plan arrays, numpy and Flower-encoded, built once per round for all nodes
        (the model changes only in ``_count``, which drops them)."""
        if self._weights is None or self._weights[0] != round_idx:
            arrays = {"w/" + k: v.numpy() for k, v in self.strategy.plan_weights().items()}
            self._weights = (round_idx, arrays, encode_arrays(arrays))
        return self._weights[1], self._weights[2]

    def forward_passes_per_plan(self) -> int:
        """Forward passes one node spends on a plan: K+1 (forward scheme) per local step."""
        return forward_passes(self.cfg.estimator.K, self.cfg.estimator.scheme) * self.strategy.local_steps

    def sent(self, node_id: int, round_idx: int, nbytes: int) -> None:
        """A train plan went out: its node draws ``local_steps`` minibatches (1 unless baffle_multistep)
        unless it fails first; ``client_steps`` counts minibatches, as the node state's ``steps``."""
        self.traffic.down_bytes += nbytes
        self.traffic.down_msgs += 1
        self.counters.download_bytes += self.plan_bytes  # the cost model baffle run counts (the message itself: down_bytes)
        pid = self.partition_of.get(node_id)
        if pid is not None:
            self.client_steps[pid] = self.client_steps.get(pid, 0) + self.strategy.local_steps
            self.stepping[node_id] = round_idx

    def node_failed(self, node_id: int, round_idx: int, reason: str) -> None:
        self.traffic.failures += 1
        pid = self.partition_of.get(node_id)
        if self.stepping.pop(node_id, None) == round_idx and pid is not None:  # nodes fail before their step (flower.node)
            self.client_steps[pid] -= self.strategy.local_steps
        log.warning("round %d: node %d (partition %s) failed: %s", round_idx, node_id, self.partition_of.get(node_id), reason)
        if "replica mismatch" in reason:
            self.weights_only.add(node_id)
        self.replica_round.pop(node_id, None)  # unknown now: replay from scratch (or weights) next time

    # ---- aggregation: the simulator's round ingest, one implementation -----------------------------
    def ingest(self, round_idx: int, uploads: list[Upload], expected: set[int], up_bytes: int) -> RoundResult:
        """Plain mode: every node's K-vector is visible; ``baffle.server.ingest`` validates, aggregates, steps."""
        self.traffic.up_bytes += up_bytes
        self.traffic.up_msgs += len(uploads)
        result = ingest_uploads(self.strategy, uploads, round_idx, expected)
        result.sampled = len(expected)  # the round_sampled column, as baffle run writes it
        fp = self.forward_passes_per_plan()
        self._count(result, answered=len(uploads), samples=sum(u.num_samples for u in result.valid),
                    upload_bytes=sum(u.nbytes for u in uploads if isinstance(u, Upload)), fp=fp,
                    ids=[self.partition_of.get(self.node_of.get(u.client_id, -1), u.client_id) for u in uploads if isinstance(u, Upload)])
        for u in result.valid if not result.skipped else ():
            self.replica_round[self.node_of[u.client_id]] = round_idx  # its replica now sits at this round
        self.resync.difference_update(u.client_id for u in uploads if isinstance(u, Upload))  # they know their step count now
        return result

    def ingest_aggregate(self, round_idx: int, mean: np.ndarray | None, contributors: int, num_examples: int, up_bytes: int, replied: int) -> RoundResult:
        """SecAgg+ mode: only the weighted mean of the contributors' K-vectors exists on the server; it
        passes the same validation and step as one pseudo-upload (``baffle.server.ingest.ingest_aggregate``)."""
        self.traffic.up_bytes += up_bytes
        self.traffic.up_msgs += replied
        result = ingest_aggregate(self.strategy, mean, contributors, num_examples, round_idx)
        fp = self.forward_passes_per_plan()
        self._count(result, answered=replied, samples=num_examples, upload_bytes=replied * (16 + 4 * self.strategy.upload_length), fp=fp)
        return result

    def skip_round(self, round_idx: int) -> RoundResult:
        result = RoundResult(round_idx, 0, skipped=True)
        self._count(result, answered=0, samples=0, upload_bytes=0, fp=0)
        return result

    def _count(self, result: RoundResult, answered: int, samples: int, upload_bytes: int, fp: int, ids: list[int] | None = None) -> None:
        """The same cost counters as the simulator's (``records.metrics.Counters``), and the privacy ledger
        (SecAgg+ hides who contributed: its rounds count ``answered`` participations, as in full participation)."""
        if self.cfg.privacy.mode != "none":
            if self.ledger is None:
                self.cfg.data.num_clients = max(self.num_partitions, 1)
                self.ledger = make_ledger(self.cfg)
            self.ledger.record(ids if ids is not None else list(range(min(answered, self.cfg.data.num_clients))))
        self._weights = self._state = self._digest = None  # the model may have changed
        c = self.counters
        c.forward_passes += fp * answered
        c.forward_samples += fp * samples
        c.upload_bytes += upload_bytes
        result.answered = answered
        c.add_round(result)
        self.history[result.round] = None if result.skipped else np.asarray(result.aggregate, dtype=np.float32).copy()
        self.last = result

    # ---- evaluation and the run record --------------------------------------------------------------
    def rounds_done(self) -> int:
        return len(self.history)

    def evaluate(self, rounds_done: int, force: bool = False) -> dict | None:
        """Called by both drivers after every round: a ``metrics.jsonl`` row in the simulator's schema
        (``records.metrics``, plus the message bytes) when one is due, then a checkpoint when one is due
        (``run.checkpoint_every``; the row is on disk before the checkpoint that covers its round)."""
        row = None
        if force or rounds_done % self.cfg.run.eval_every == 0 or rounds_done == self.cfg.run.rounds:
            row = self._evaluate(rounds_done)
        every = self.cfg.run.checkpoint_every
        if not force and every and rounds_done % every == 0:
            self.save_checkpoint()
        return row

    def _evaluate(self, rounds_done: int) -> dict:
        load_weights(self.eval_model, self.strategy.eval_weights())
        test = evaluate(self.eval_model, self.test, cache=self.head_cache)
        train_loss = probe_loss(self.eval_model, self.train_probe, cache=self.head_cache)
        t, c = self.traffic, self.counters
        c.wall_s = self.wall0 + time.perf_counter() - self.t0
        costs = per_round_costs(self.cfg, self.strategy.n, self.strategy.plan_tensor_nbytes())
        extra = {
            "down_bytes": t.down_bytes,
            "up_bytes": t.up_bytes,
            "down_bytes_per_msg": t.down_bytes / max(1, t.down_msgs),
            "up_bytes_per_msg": t.up_bytes / max(1, t.up_msgs),
            "failures": t.failures,
        }
        lr = self.strategy.optimizer.param_groups[0]["lr"]
        extra.update(privacy_metrics(self.ledger))
        extra.update(self.driver_metrics)
        row = metrics_row(rounds_done, test, train_loss, costs, c, lr, self.last, extra, self.plan_bytes)
        self.rows.append(row)
        append_metrics(self.out, row)
        return row

    def finish(self, mode: str) -> dict:
        """Write the run dir as ``baffle run`` does (summary.json, curves.png, checkpoint.pt with the final
        server state) plus result.json (the Flower-specific totals); return the latter."""
        last = self.rows[-1] if self.rows else self.evaluate(self.rounds_done(), force=True)
        t = self.traffic
        summary = make_summary(self.cfg, self.rows, self.counters)
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
            "plans": {"weights": t.plans_weights, "replay": t.plans_replay, "state": t.plans_state},
            "rejected": self.counters.rejected,
            "skipped_rounds": self.counters.skipped_rounds,
            "weights_sha256": weights_digest(self.strategy.model.state_dict()).hex(),
            "wall_s": round(self.wall0 + time.perf_counter() - self.t0, 2),  # a resumed run: all its segments, as summary.json
            **self.driver_metrics,
            **self.driver_record,
        }
        if self.out is not None:
            from baffle.records.report import write_curves, write_summary

            write_summary(self.out, summary)
            write_curves(self.out, self.rows, title=f"flower {mode} {self.cfg.model.name} {self.cfg.data.name}")
            self.save_checkpoint()
            atomic_write_bytes(self.out / "result.json", (json.dumps(result, indent=2) + "\n").encode())
        return result
