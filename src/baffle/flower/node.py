"""What a Flower node does with a baffle plan: the same ``baffle.client.Client.step`` as ``baffle run``.

A node is partition ``partition-id`` of ``num-partitions`` (from its node config; the simulation engine
sets both). It holds exactly the samples ``baffle run`` gives client ``partition-id`` (same subset, same
partitioner, same seeds, same order), so a Flower run and an in-process run with the same config sample the
same minibatches; it loads only those (``partition_data``: cached on disk per partition, never the test set). Everything that must survive between rounds lives in the Flower node state
(``context.state``): the minibatch sampler position, the number of steps taken and, in replay transport,
the server replica. A node whose state is new in a run that has gone on without it (a resumed run, a
restarted node taking its partition over) is told by the server how many steps its partition has taken
(``client-steps`` in the plan) and re-draws those minibatches, so it continues with the very batches the
uninterrupted run would draw.

Replay transport: the replica is a ``ServerStrategy`` (model + optimizer + schedule) that the node advances
with the aggregated K-vectors the server sends, i.e. the very update the server made, then checks against
the server's SHA-256 of the weights. No weights travel at all after the start.
In ``auto`` transport a node far behind the server receives the server's training state once (``state``)
and replays from there.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from baffle import trajectory
from baffle.client import Client
from baffle.config import Config
from baffle.config.data import augments
from baffle.data.augment import augment_cifar
from baffle.data.cache import cache_dir, cached_arrays
from baffle.data.dataset import Dataset
from baffle.flower.records import Payload
from baffle.plan_state import check_plan_state, replica_digest
from baffle.protocol import streams
from baffle.protocol.messages import MessageError, RoundPlan, Upload
from baffle.engine import engine_for
from baffle.engine.threads import intra_op_threads
from baffle.estimator import select_parameters
from baffle.pruning import magnitude_mask
from baffle.sim.factory import build_model_for, client_partitions, load_train
from baffle.server.strategy import ServerStrategy

log = logging.getLogger("baffle")

STATE = "baffle.node-state"  # ConfigRecord in context.state


class NodeFailure(RuntimeError):
    """Raised on purpose (node config ``fail-at-round``) to test that a round survives a dropout."""


@dataclass(frozen=True)
class NodeIdentity:
    partition_id: int
    num_partitions: int
    fail_at_round: int = -1  # 0-based baffle round at which this node raises (testing dropouts); -1 never


def node_identity(node_config: Mapping[str, Any]) -> NodeIdentity:
    try:
        pid = int(node_config["partition-id"])
        num = int(node_config["num-partitions"])
    except KeyError as e:
        raise ValueError(f"node config lacks {e}; start the SuperNode with --node-config \"partition-id=0 num-partitions=2\"") from None
    if not 0 <= pid < num:
        raise ValueError(f"partition-id={pid} must be in [0, num-partitions={num})")
    return NodeIdentity(pid, num, int(node_config.get("fail-at-round", -1)))


PARTITION_CACHE_FORMAT = 1  # bump to invalidate every cached partition


def data_key(cfg: Config, partitioner: str = "") -> str:
    """What determines the training data and its split (the partition cache key); ``partitioner``: the
    Flower option ``flwr-partitioner`` ("" = baffle's ``data.partition``)."""
    d = cfg.data
    keys = ("name", "root", "image_size", "partition", "alpha", "shards_per_client", "train_subset", "transform", "classes")
    import baffle
    from baffle.data.cache import CACHE_FORMAT  # the data layer's own cache version: a bump invalidates partitions too

    fmt = [PARTITION_CACHE_FORMAT, CACHE_FORMAT, baffle.__version__]
    key = {"run": {"seed": cfg.run.seed}, "data": {k: getattr(d, k) for k in keys}, "format": fmt}
    if partitioner:
        key["flwr-partitioner"] = partitioner
    return json.dumps(key, sort_keys=True)


def partition_data(cfg: Config, partition_id: int, num_partitions: int, partitioner: str = "") -> Dataset:
    """This node's training samples only, in the order ``baffle run``'s client ``partition_id`` holds them
    (with ``partitioner``, the ``flwr-partitioner`` option: as that flwr-datasets partitioner splits them,
    ``baffle.flower.datasets``).

    The first call on a machine loads the training split (never the test set), partitions it exactly as
    the simulator does and keeps only this partition, written to ``$BAFFLE_CACHE/flower-partitions/`` (one
    .npz per partition); every later call (each message of a deployment starts a new ClientApp process)
    reads that file alone, so a node holds its partition, not the dataset.
    """
    return _partition_data(data_key(cfg, partitioner), partition_id, num_partitions)


PARTITION_CACHE_BYTES = 512 << 20  # partitions kept in memory per process (simulation: one process serves many nodes)


class _PartitionCache:
    """Least-recently-used partitions of this process, bounded in bytes, not in count: a simulation runs
    every virtual node in a few processes, so with a count bound (it was 4) a 1,000-node round re-read
    every partition file; the partitions of one split are disjoint, so caching all of them costs at most
    the dataset. A deployed node (one process per message) holds its own partition only."""

    def __init__(self, budget: int):
        self.budget = budget
        self.items: OrderedDict[tuple[str, int, int], tuple[Dataset, int]] = OrderedDict()
        self.nbytes = 0

    def __call__(self, key: str, partition_id: int, num_partitions: int) -> Dataset:
        k = (key, partition_id, num_partitions)
        if k in self.items:
            self.items.move_to_end(k)
            return self.items[k][0]
        data = _load_partition(key, partition_id, num_partitions)
        size = data.x.element_size() * data.x.nelement() + data.y.element_size() * data.y.nelement()
        self.items[k] = (data, size)
        self.nbytes += size
        while self.nbytes > self.budget and len(self.items) > 1:
            _, (_, dropped) = self.items.popitem(last=False)
            self.nbytes -= dropped
        return data

    def cache_clear(self) -> None:
        self.items.clear()
        self.nbytes = 0


def _load_partition(key: str, partition_id: int, num_partitions: int) -> Dataset:
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    target = cache_dir() / "flower-partitions" / f"{digest}-{partition_id}-of-{num_partitions}.npz"

    def build() -> dict[str, np.ndarray]:
        k = json.loads(key)
        cfg = Config.from_dict({"run": k["run"], "data": k["data"]})
        train, _ = load_train(cfg)
        cfg.data.num_clients = num_partitions
        groups = None if train.groups is None else train.groups.numpy()
        if k.get("flwr-partitioner"):
            from baffle.flower.datasets import partition_for

            parts = partition_for(cfg, k["flwr-partitioner"], num_partitions, train.y.numpy(), groups)
        else:
            parts = client_partitions(cfg, train)  # the simulator's own split (data.partition=domain uses the groups)
        mine = train.subset(parts[partition_id])
        return {"x": mine.x.numpy(), "y": mine.y.numpy(), "num_classes": np.int64(train.num_classes),
                "name": np.str_(train.name), "classes": np.array(list(train.classes), dtype=np.str_)}

    a = cached_arrays(target, build)
    return Dataset(x=a["x"], y=a["y"], num_classes=int(a["num_classes"]), name=str(a["name"]),
                   classes=tuple(str(c) for c in a["classes"]))


_partition_data = _PartitionCache(PARTITION_CACHE_BYTES)


_WORKERS: OrderedDict[str, tuple[torch.nn.Module, Any]] = OrderedDict()


def pruning_mask(cfg: Config, model: torch.nn.Module) -> np.ndarray | None:
    """The run's pruning mask (``model.prune``), rebuilt by the node from ``model`` as built from the config:
    the server takes it from the same initial weights (same seed, same ``model.init``), so no mask is sent.
    Must be called before any round's weights are loaded into ``model``."""
    if cfg.model.prune <= 0:
        return None
    return magnitude_mask(select_parameters(model, cfg.model.trainable), cfg.model.prune)


def shared_worker(cfg: Config, train: Dataset) -> tuple[torch.nn.Module, Any]:
    """One model and one engine per run config and process, shared by every node this process serves.

    Why: building the model and, for the batched engine, tracing its program cost a few client steps,
    and a simulation process serves many virtual nodes, one message each per round. Sharing is what the
    simulator does with its clients, and it is safe for the same reason: every plan loads the full
    weights (or the replica's) into the model before the step, and the step leaves them unchanged."""
    key = json.dumps({"cfg": cfg.to_dict(), "input": list(train.x.shape[1:]), "classes": int(train.num_classes)}, sort_keys=True)
    if key in _WORKERS:
        _WORKERS.move_to_end(key)
    else:
        model = build_model_for(cfg, train)
        _WORKERS[key] = (model, engine_for(cfg.estimator, pruning_mask(cfg, model), augments(cfg.data)))
        while len(_WORKERS) > 4:
            _WORKERS.popitem(last=False)
    return _WORKERS[key]


_REPLICAS: OrderedDict[str, tuple[ServerStrategy, dict]] = OrderedDict()
# (replica key, round, weights digest) -> (replica state bytes, weights) a node of this process reached by replay:
# every node replays the same server updates, so in a process that serves many nodes (the simulation) the
# first node of a round does the reconstruction and the optimizer step and the others reuse them
_REPLAYED: OrderedDict[tuple[str, int, bytes], tuple[bytes, dict]] = OrderedDict()


def replica_key(cfg: Config, train: Dataset) -> str:
    return json.dumps({"cfg": cfg.to_dict(), "input": list(train.x.shape[1:]), "classes": int(train.num_classes)}, sort_keys=True)


def shared_replica(cfg: Config, train: Dataset, key: str | None = None) -> tuple[ServerStrategy, dict]:
    """One replica object (model + optimizer) per run config and process, and its initial state.

    Every message loads the node's own replica state into it (``load_state_dict`` replaces the model, the
    optimizer's moments and its schedule position: nothing else in a ``ServerStrategy`` changes after it
    is built), so building a model and an optimizer per message is not needed. ``key``: ``replica_key(cfg,
    train)`` when the caller has it already."""
    key = key or replica_key(cfg, train)
    if key in _REPLICAS:
        _REPLICAS.move_to_end(key)
    else:
        rcfg = copy.deepcopy(cfg)
        rcfg.optim.ema_decay = 0.0  # the replica only needs the training weights, not the evaluation EMA
        replica = ServerStrategy(build_model_for(rcfg, train), rcfg)
        if (mask := pruning_mask(rcfg, replica.model)) is not None:
            replica.set_mask(mask)  # the replayed updates are masked as the server's are
        _REPLICAS[key] = (replica, copy.deepcopy(replica.state_dict()))
        while len(_REPLICAS) > 4:
            _REPLICAS.popitem(last=False)
    return _REPLICAS[key]


def client_seed(run_seed: int, partition_id: int) -> int:
    return streams.client_seed(run_seed, partition_id)  # as the simulator


class Node:
    """One invocation's view of a node; state in/out through a plain dict (the ConfigRecord)."""

    def __init__(self, cfg: Config, ident: NodeIdentity, state: Mapping[str, Any] | None = None, partitioner: str = ""):
        self.cfg = cfg
        self.ident = ident
        train = partition_data(cfg, ident.partition_id, ident.num_partitions, partitioner)  # this partition only
        self.train = train
        self.model, engine = shared_worker(cfg, train)
        self.client = Client(
            ident.partition_id,
            train,
            np.arange(len(train)),  # the partition's samples, in the simulator client's order
            self.model,
            batch_size=cfg.federation.batch_size,
            seed=client_seed(cfg.run.seed, ident.partition_id),
            trainable=cfg.model.trainable,
            engine=engine,
            transform=augment_cifar if augments(cfg.data) else None,
        )
        # run.threads, or the rule of baffle.engine.threads for this node's one client
        torch.set_num_threads(intra_op_threads(cfg, self.model, self.client.engine, tuple(train.x.shape[1:]), 1))
        self.state: dict[str, Any] = dict(state or {})
        if "sampler-epoch" in self.state:
            self.client.sampler.load_state_dict({"epoch": self.state["sampler-epoch"], "position": self.state["sampler-position"]})
        if "generator" in self.state:
            self.client.generator.set_state(torch.frombuffer(bytearray(self.state["generator"]), dtype=torch.uint8))

    @property
    def num_samples(self) -> int:
        return self.client.num_samples

    def handle(self, payload: Payload) -> Upload:
        c, a = payload.config, payload.arrays
        try:
            round_idx = int(c["round"])
            transport = str(c["transport"])
            seeds = np.asarray(a["seeds"], dtype=np.uint64)
            plan = RoundPlan(round_idx, seeds, float(c["sigma"]), str(c["scheme"]), int(c["batch-size"]), None,
                             str(c.get("noise", "v1")))
        except KeyError as e:
            raise MessageError(f"plan lacks {e}") from None
        if round_idx == self.ident.fail_at_round:
            raise NodeFailure(f"partition {self.ident.partition_id}: failing at round {round_idx} as configured (fail-at-round)")
        if plan.batch_size != self.client.sampler.batch_size:
            raise MessageError(f"plan batch size {plan.batch_size} != node batch size {self.client.sampler.batch_size} (same run config?)")
        if plan.noise != self.cfg.estimator.noise:
            raise MessageError(f"plan noise {plan.noise!r} != node noise {self.cfg.estimator.noise!r} (same run config?)")
        if "client-steps" in c:
            self._catch_up(int(c["client-steps"]))
        if transport == "weights":  # the tensors that change (all, or the trainable subset) + the frozen fingerprint
            weights = {k[2:]: torch.from_numpy(np.array(v)) for k, v in a.items() if k.startswith("w/")}
            frozen = c.get("frozen-sha256")
            self.client.load_plan(weights, None if frozen is None else bytes(frozen))
            self.state.pop("replica", None)
            self.state.pop("replica-round", None)
        elif transport == "replay":
            self._replay(round_idx, int(c["replay-from"]), bytes(c["weights-sha256"]), a)
        elif transport == "state":
            self._adopt_state(round_idx, bytes(c["weights-sha256"]), a)
        else:
            raise MessageError(f"unknown transport {transport!r}")
        if self.cfg.run.method == "baffle_multistep":  # S local steps from the weights just loaded, S x K scalars up
            S = trajectory.steps_per_round(self.cfg)
            if seeds.size != S * self.cfg.estimator.K:
                raise MessageError(f"plan has {seeds.size} seeds, baffle_multistep needs local_steps x K = {S * self.cfg.estimator.K}")
            upload = trajectory.local_round(self.client, self.cfg, seeds.reshape(S, -1), round_idx)
        else:
            upload = self.client.step(plan)
        p = self.cfg.privacy
        if p.mode == "local":  # what leaves the node is already clipped and noised (as in the simulator)
            from baffle.privacy import privatize_upload

            upload = privatize_upload(upload, p.clip, p.noise_multiplier, self.cfg.run.seed)
        s = self.client.sampler.state_dict()
        self.state["sampler-epoch"], self.state["sampler-position"] = int(s["epoch"]), int(s["position"])
        self.state["steps"] = int(self.state.get("steps", 0)) + trajectory.steps_per_round(self.cfg)  # minibatches drawn
        self.state["generator"] = bytes(self.client.generator.get_state().numpy().tobytes())
        return upload

    def _catch_up(self, steps: int) -> None:
        """Put the sampler and the augmentation generator where they are after ``steps`` steps of this
        partition, by drawing those minibatches again from the start (the state is a pure function of the
        batches drawn); a node already there does nothing. Every failure before this point leaves the node
        state unsaved, which is why the server counts a step for every plan that did not fail."""
        if steps < 0:
            raise MessageError(f"client-steps={steps} is negative")
        if int(self.state.get("steps", 0)) == steps:
            return
        c = self.client
        c.sampler.load_state_dict({"epoch": 0, "position": 0})
        c.generator.manual_seed(client_seed(self.cfg.run.seed, self.ident.partition_id))
        for _ in range(steps):
            c.next_batch()
        self.state["steps"] = steps

    # ---- replay transport ---------------------------------------------------------------------
    # The replica kept in the node state holds the model's plan tensors (``ServerStrategy.plan_names``: all of
    # it, or only the trainable subset) and the optimizer; the frozen rest is the replica's own build
    # (``shared_replica``'s initial state), merged back in on every load, so a MiniLM head run keeps ~3 kB per
    # node, not the 90 MB model.
    def _replay(self, round_idx: int, replay_from: int, digest: bytes, arrays: Mapping[str, np.ndarray]) -> None:
        rkey = replica_key(self.cfg, self.train)
        key = (rkey, round_idx, digest)
        if key in _REPLAYED:  # another node of this process already reached this very state: same bytes, same weights
            self._store_replica(round_idx, *_REPLAYED[key])
            return
        replica, initial = shared_replica(self.cfg, self.train, rkey)
        at = 0
        if "replica" in self.state:
            _load_replica(replica, initial, torch.load(io.BytesIO(self.state["replica"]), weights_only=True))
            at = int(self.state["replica-round"])
        else:
            replica.load_state_dict(initial)  # a new replica: the server's initial state
        if at < replay_from:
            self.state.pop("replica", None)
            raise MessageError(f"replica mismatch: replica at round {at}, server replays from {replay_from}")
        skipped = {int(r) for r in np.asarray(arrays.get("skipped", np.zeros(0, np.int64)))}
        for r in range(at, round_idx):
            if r in skipped:
                continue
            key_r = f"h/{r}"
            if key_r not in arrays:
                raise MessageError(f"replica mismatch: replay history lacks round {r}")
            replica.apply_loss_diffs(r, np.asarray(arrays[key_r], dtype=np.float32))
        if replica_digest(replica.model, replica.plan_names) != digest:
            self.state.pop("replica", None)
            raise MessageError(f"replica mismatch: weights after replaying to round {round_idx} differ from the server's")
        state = replica.state_dict()
        state["model"] = {k: state["model"][k] for k in replica.plan_names}
        buf = io.BytesIO()
        torch.save(state, buf)
        entry = (buf.getvalue(), replica.plan_weights(), replica.frozen_sha256())
        _REPLAYED[key] = entry
        while len(_REPLAYED) > 2:  # only this round's entry is useful; each holds ~4x the plan's tensors
            _REPLAYED.popitem(last=False)
        self._store_replica(round_idx, *entry)

    def _adopt_state(self, round_idx: int, digest: bytes, arrays: Mapping[str, np.ndarray]) -> None:
        """``auto`` transport for a node far behind: the server's training state becomes this node's replica.
        Its model part is the plan's tensors (all, or the trainable subset): the frozen rest is the replica's own
        build, which the digest covers."""
        if "state" not in arrays:
            raise MessageError("plan lacks the server state (transport 'state')")
        blob = np.asarray(arrays["state"], dtype=np.uint8).tobytes()
        replica, initial = shared_replica(self.cfg, self.train)
        try:  # weights_only: tensors and plain containers, never code
            _load_replica(replica, initial, torch.load(io.BytesIO(blob), weights_only=True))
        except Exception as e:
            raise MessageError(f"server state does not load into this node's replica: {e}") from None
        if replica_digest(replica.model, replica.plan_names) != digest:
            raise MessageError(f"replica mismatch: the server state of round {round_idx} does not hash to its weights")
        # the bytes as received: they just loaded
        self._store_replica(round_idx, blob, replica.plan_weights(), replica.frozen_sha256())

    def _store_replica(self, round_idx: int, blob: bytes, weights: Mapping[str, torch.Tensor], frozen: bytes | None) -> None:
        self.state["replica"] = blob
        self.state["replica-round"] = round_idx
        self.client.load_plan(weights, frozen)  # the worker model's frozen part must be the replica's


def _load_replica(replica: ServerStrategy, initial: dict, state: dict) -> None:
    """Load a stored or received replica state whose model part is the plan's tensors (checked: exactly
    ``replica.plan_names``, shapes and dtypes); the frozen rest comes from the replica's initial build."""
    check_plan_state(replica.model, state["model"], replica.plan_names)
    replica.load_state_dict({**state, "model": {**initial["model"], **state["model"]}})
