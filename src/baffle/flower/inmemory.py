"""A single-process Flower ``Grid``: the real ServerApp and ClientApp objects, messages passed in memory.

Flower's own runtimes (Ray simulation, SuperLink + SuperNodes) start processes and take tens of seconds
before the first message; this grid calls ``client_app(message, context)`` directly, with one persistent
``Context`` per node, and turns an exception raised by a ClientApp into an error reply exactly as a
SuperNode does. Every Flower-side code path of baffle (records, the Message-API strategy, SecAgg+ with
``secaggplus_mod``, node state) runs unchanged. Tests and measurement scripts use it; the real runtimes
are exercised by ``flwr run`` and ``scripts/deploy_local.sh``.
"""

from __future__ import annotations

import copy
import itertools
from types import SimpleNamespace
from typing import Any, Iterable, Mapping

from flwr.app import Context, Error, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE_ID = 1
CLIENT_APP_RAISED_EXCEPTION = 2  # flwr.common.constant.ErrorCode


class InMemoryGrid(Grid):
    def __init__(self, client_app, node_configs: list[Mapping[str, Any]], run_config: Mapping[str, Any], run_id: int = 7):
        self.client_app = client_app
        self._run = SimpleNamespace(run_id=run_id)
        self._ids = itertools.count(1)
        self.contexts: dict[int, Context] = {}
        for i, nc in enumerate(node_configs):
            nid = 1000 + i
            self.contexts[nid] = Context(run_id, nid, dict(nc), RecordDict(), dict(run_config))
        self._replies: dict[str, Message] = {}
        self.offline: set[int] = set()  # nodes that never answer (network dropout)
        self.count_bytes = False
        self.traffic: list[tuple[str, int, str, str, int]] = []  # (down|up, node, group id, type, content bytes)

    # ---- Grid API -------------------------------------------------------------------------------
    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid  # what the SuperLink assigns
            nid = msg.metadata.dst_node_id
            if nid in self.offline:
                ids.append(mid)
                continue
            delivered = _copy(msg)  # a real transport serializes: no object is shared between nodes
            self._count("down", nid, msg)
            try:
                reply = _copy(self.client_app(delivered, self.contexts[nid]))
            except Exception as e:  # what a SuperNode does with a ClientApp exception
                reply = Message(Error(CLIENT_APP_RAISED_EXCEPTION, f"{type(e).__name__}: {e}"), reply_to=delivered)
            self._count("up", nid, reply)
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def _count(self, direction: str, nid: int, msg: Message) -> None:
        if self.count_bytes and msg.has_content():
            from baffle.flower.records import content_nbytes

            self.traffic.append((direction, nid, msg.metadata.group_id, msg.metadata.message_type, content_nbytes(msg.content)))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _copy(msg: Message) -> Message:
    """Serialize and parse a message's content, as the wire does (Flower's own protobuf serde)."""
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

    meta = copy.copy(msg.metadata)
    meta.__dict__.update(copy.deepcopy({k: v for k, v in msg.metadata.__dict__.items()}))
    if msg.has_error():
        return Message(metadata=meta, error=msg.error)
    return Message(metadata=meta, content=recorddict_from_proto(recorddict_to_proto(msg.content)))


def run_inmemory(run_config: Mapping[str, Any], num_nodes: int, node_extra: Mapping[int, Mapping[str, Any]] | None = None, count_bytes: bool = False) -> InMemoryGrid:
    """Run baffle's ServerApp against ``num_nodes`` in-memory nodes; returns the grid (node contexts)."""
    from baffle.flower.client_app import app as client_app
    from baffle.flower.server_app import main

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, SERVER_NODE_ID, 1
    configs = [{"partition-id": i, "num-partitions": num_nodes, **(node_extra or {}).get(i, {})} for i in range(num_nodes)]
    grid = InMemoryGrid(client_app, configs, run_config)
    grid.count_bytes = count_bytes
    main(grid, Context(7, SERVER_NODE_ID, {}, RecordDict(), dict(run_config)))
    return grid
