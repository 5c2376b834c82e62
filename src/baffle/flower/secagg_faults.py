"""Failures injected on purpose at one SecAgg+ stage, so every stage's dropout can be tested and measured.

Two harnesses, one per way a node can fail:

* **The node's own ClientApp fails** (node config ``secagg-fault = "STAGE:ROUND[:MODE]"``, read by
  ``secagg_fault_mod`` in front of ``secaggplus_mod``). STAGE is one of Flower's SecAgg+ stages
  (``setup``, ``share_keys``, ``collect_masked_vectors``, ``unmask``), ROUND the 0-based baffle round
  (Flower round - 1). MODE ``raise`` (default): the ClientApp raises ``SecAggFault``, so the node answers
  with an error, as after a crash of the app process. MODE ``hang``: the node writes the marker file
  ``$BAFFLE_FAULT_DIR/secagg-fault-p{PARTITION}`` (stage and round inside) and blocks, so that a harness
  SIGKILLs the whole SuperNode at exactly that stage (``scripts/deploy_local.sh --kill``); it raises if
  nobody does within ``HANG_LIMIT_S``. The fault fires once per node (remembered in the node state). A node
  without the key is untouched: only tests and the deployment harness set it.
* **The node disappears** (``KillingGrid``, in-memory only): at that stage the node gets the message and
  never answers, leaves the grid's node list (what a SuperLink does once its heartbeat expires) and, with
  ``restart``, comes back at once as a new node id with a fresh state and the same partition (what a
  restarted SuperNode without a fixed key does).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from baffle.flower.inmemory import InMemoryGrid

FAULT_KEY = "secagg-fault"  # node config key
FAULT_DIR_ENV = "BAFFLE_FAULT_DIR"  # where a hanging node writes its marker (deployment harness)
FIRED = "baffle.secagg-fault"  # ConfigRecord in the node state: the fault has fired
STAGES: tuple[str, ...] = tuple(Stage.all())
MODES = ("raise", "hang")
HANG_LIMIT_S = 600.0


class SecAggFault(RuntimeError):
    """Raised by a node on purpose at the stage its ``secagg-fault`` names."""


@dataclass(frozen=True)
class Fault:
    stage: str
    round: int  # 0-based baffle round
    mode: str = "raise"

    def __str__(self) -> str:
        return f"{self.stage}:{self.round}:{self.mode}"


def parse_fault(value: str) -> Fault:
    """``"STAGE:ROUND[:MODE]"`` -> ``Fault``; a one-line error names the key and the valid values."""
    parts = str(value).split(":")
    if len(parts) not in (2, 3) or parts[0] not in STAGES or not parts[1].lstrip("-").isdigit():
        raise ValueError(f"{FAULT_KEY}={value!r}: expected STAGE:ROUND[:MODE] with STAGE in {list(STAGES)}, ROUND an integer")
    mode = parts[2] if len(parts) == 3 else "raise"
    if mode not in MODES:
        raise ValueError(f"{FAULT_KEY}={value!r}: MODE must be one of {list(MODES)}")
    return Fault(parts[0], int(parts[1]), mode)


def message_stage(msg: Message) -> tuple[str, int] | None:
    """(SecAgg+ stage, 0-based baffle round) of a SecAgg+ message, None for any other message."""
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS) if msg.has_content() else None
    if configs is None or Key.STAGE not in configs:
        return None
    try:
        return str(configs[Key.STAGE]), int(msg.metadata.group_id) - 1
    except ValueError:
        return None


def secagg_fault_mod(msg: Message, ctxt: Context, call_next):
    """ClientApp mod: fail at the configured stage and round (once), else pass the message on."""
    value = ctxt.node_config.get(FAULT_KEY)
    if not value or FIRED in ctxt.state.config_records:
        return call_next(msg, ctxt)
    fault = parse_fault(str(value))
    if message_stage(msg) != (fault.stage, fault.round):
        return call_next(msg, ctxt)
    ctxt.state.config_records[FIRED] = ConfigRecord({"fault": str(fault)})
    partition = ctxt.node_config.get("partition-id")
    if fault.mode == "hang":
        where = os.environ.get(FAULT_DIR_ENV)
        if not where:
            raise SecAggFault(f"{FAULT_KEY}={value!r} (hang) needs ${FAULT_DIR_ENV}")
        marker = Path(where) / f"secagg-fault-p{partition}"
        marker.write_text(f"{fault.stage} {fault.round} {os.getpid()}\n")
        time.sleep(HANG_LIMIT_S)  # the harness SIGKILLs the SuperNode now
    raise SecAggFault(f"partition {partition}: failing at SecAgg+ stage {fault.stage} of round {fault.round} ({FAULT_KEY})")


class KillingGrid(InMemoryGrid):
    """The in-memory grid, where the node holding ``partition`` vanishes at ``stage`` of ``round``.

    The node receives that message and never answers (as a SIGKILLed SuperNode), leaves ``get_node_ids``
    (the SuperLink's heartbeat expiry) and, with ``restart``, is replaced at once by a new node id with a fresh
    ``Context`` (no SecAgg+ keys, no sampler state) holding the same partition, without the fault; with
    ``same_id`` under its old node id instead (a SuperNode started again with the same key).
    """

    def __init__(self, client_app, node_configs: list[Mapping[str, Any]], run_config: Mapping[str, Any],
                 kill: tuple[int, str, int] | None = None, restart: bool = True, same_id: bool = False, run_id: int = 7):
        super().__init__(client_app, node_configs, run_config, run_id)
        self.kill = kill  # (partition, stage, 0-based round)
        self.restart = restart
        self.same_id = same_id  # restart under the old node id (a SuperNode with a fixed key: --auth)
        self.killed: list[int] = []  # node ids
        self.restarted: list[int] = []

    def _partition(self, nid: int) -> int:
        return int(self.contexts[nid].node_config["partition-id"])

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            if nid not in self.contexts:  # a dead node: the message goes nowhere
                msg.metadata.__dict__["_message_id"] = mid = f"m{next(self._ids)}"
                ids.append(mid)
                continue
            at = message_stage(msg)
            if self.kill is not None and at is not None and (self._partition(nid), *at) == self.kill:
                self._kill(nid)
                msg.metadata.__dict__["_message_id"] = mid = f"m{next(self._ids)}"
                ids.append(mid)
                continue
            ids.extend(super().push_messages([msg]))
        return ids

    def _kill(self, nid: int) -> None:
        ctx = self.contexts.pop(nid)
        self.killed.append(nid)
        self.kill = None
        if self.restart:
            new = nid if self.same_id else max([*self.contexts, *self.killed]) + 1
            config = {k: v for k, v in ctx.node_config.items() if k != FAULT_KEY}
            self.contexts[new] = Context(ctx.run_id, new, config, RecordDict(), dict(ctx.run_config))
            self.restarted.append(new)


def run_killing(run_config: Mapping[str, Any], num_nodes: int, kill: tuple[int, str, int] | None,
                node_extra: Mapping[int, Mapping[str, Any]] | None = None, restart: bool = True,
                same_id: bool = False) -> KillingGrid:
    """``baffle.flower.inmemory.run_inmemory`` on a ``KillingGrid``: baffle's ServerApp against in-memory nodes."""
    from flwr.supercore.task_identity import TaskIdentity

    from baffle.flower.client_app import app as client_app
    from baffle.flower.inmemory import SERVER_NODE_ID
    from baffle.flower.server_app import main

    if kill is not None and kill[1] not in STAGES:
        raise ValueError(f"kill stage {kill[1]!r} is not one of {list(STAGES)}")
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, SERVER_NODE_ID, 1
    configs = [{"partition-id": i, "num-partitions": num_nodes, **(node_extra or {}).get(i, {})} for i in range(num_nodes)]
    grid = KillingGrid(client_app, configs, run_config, kill, restart, same_id)
    main(grid, Context(7, SERVER_NODE_ID, {}, RecordDict(), dict(run_config)))
    return grid
