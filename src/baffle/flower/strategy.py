"""``BaffleStrategy``: a Flower Message-API ``Strategy`` whose math is ``baffle.server.strategy.ServerStrategy``.

Flower's ``Strategy.start`` drives the rounds (send, wait with a timeout, aggregate, evaluate);
``configure_train`` sends each sampled node its plan (weights or replay history, seeds, sigma) and
``aggregate_train`` decodes the K-vectors and hands them to ``ServerCore.ingest``. Flower rounds count from
1, baffle rounds from 0: baffle round = server_round - 1. Nodes answering with an error (a crash, a
replica mismatch) or not answering in time are simply left out of the round.
"""

from __future__ import annotations

import logging
from typing import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from baffle.flower import records
from baffle.flower.server_core import NODE_INFO, ServerCore
from baffle.flower.versions import VERSIONS, mismatch
from baffle.protocol.messages import MessageError

log = logging.getLogger("baffle")


def refresh_nodes(core: ServerCore, grid: Grid, timeout: float, forget_gone: bool = False) -> None:
    """Ask nodes the server has not met yet which partition they hold (a restarted node has a new id and
    takes its partition over: ``ServerCore.register``). With ``forget_gone``, a partition whose node has left
    the grid (a SuperLink drops a node whose heartbeat stopped) is not sampled until a node reports it again;
    the node keeps its partition in ``partition_of``, so later log lines still name it."""
    ids = list(grid.get_node_ids())
    if forget_gone:
        present = set(ids)
        for pid, nid in sorted(core.node_of.items()):
            if nid not in present:
                log.warning("node %d (partition %d) has left; partition %d waits for a node to report it", nid, pid, pid)
                del core.node_of[pid]
    serving = set(core.node_of.values())  # a node back under its old id (a fixed key) is asked again
    new = [nid for nid in ids if (nid not in core.partition_of or (forget_gone and nid not in serving)) and nid not in core.refused]
    if not new:
        return
    msgs = [Message(RecordDict(), dst_node_id=nid, message_type=MessageType.QUERY) for nid in new]
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        nid = reply.metadata.src_node_id
        if reply.has_error() or NODE_INFO not in reply.content.metric_records:
            log.warning("node %d did not say which partition it holds: %s", nid, reply.error if reply.has_error() else "no info")
            continue
        versions = reply.content.config_records.get(VERSIONS)
        if (why := mismatch(dict(versions) if versions is not None else None, f"node {nid}")) is not None:
            log.error("%s", why)
            core.refused[nid] = why
            continue
        info = reply.content.metric_records[NODE_INFO]
        pid = int(info["partition-id"])
        earlier = [n for n, p in core.partition_of.items() if p == pid and n != nid]
        core.register(nid, pid, int(info["num-partitions"]))
        if earlier:
            log.warning("node %d reports partition %d, held before by node %d: it rejoins", nid, pid, earlier[-1])


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        ids = list(grid.get_node_ids())
        if len(ids) >= count or time.monotonic() > deadline:
            if len(ids) < count:
                log.warning("only %d of the %d requested nodes connected within %.0f s", len(ids), count, timeout)
            return ids
        time.sleep(0.5)


class BaffleStrategy(Strategy):
    def __init__(self, core: ServerCore):
        self.core = core
        self._sampled: dict[int, list[int]] = {}  # round -> the partitions sampled, in the order baffle run steps them

    def summary(self) -> None:
        c = self.core.cfg
        log.info(
            "BaffleStrategy: K=%d sigma=%g scheme=%s transport=%s, %s on %s",
            c.estimator.K, c.estimator.sigma, c.estimator.scheme, self.core.opts.transport, c.model.name, c.data.name,
        )

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        r = server_round - 1
        refresh_nodes(self.core, grid, self.core.opts.round_timeout_s)
        picked = self.core.sample(r)
        self._sampled[r] = [p for p, _ in picked]
        out = []
        for _, nid in picked:
            content = records.to_records(self.core.plan_payload(r, nid))
            self.core.sent(nid, r, records.content_nbytes(content))
            out.append(Message(content, dst_node_id=nid, message_type=MessageType.TRAIN, group_id=str(server_round)))
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        r = server_round - 1
        uploads, up_bytes = [], 0
        for reply in replies:
            nid = reply.metadata.src_node_id
            if reply.has_error():
                self.core.node_failed(nid, r, reply.error.reason)
                continue
            pid = self.core.partition_of.get(nid)
            try:
                if pid is None:
                    raise MessageError(f"reply from unknown node {nid}")
                up_bytes += records.content_nbytes(reply.content)
                uploads.append(records.upload_from_records(reply.content, pid))
            except MessageError as e:
                self.core.node_failed(nid, r, str(e))
        # Replies arrive in whatever order the nodes answered; the aggregate is a float sum, so hand the uploads
        # over in the sampled order `baffle run` uses (a different order changes the sum's last bit now and then:
        # a 3,000-round run diverged at round 2,777 before this)
        order = self._sampled.pop(r, [])
        rank = {p: i for i, p in enumerate(order)}
        uploads.sort(key=lambda u: rank.get(u.client_id, len(rank)))
        result = self.core.ingest(r, uploads, set(order), up_bytes)
        metrics = MetricRecord({"accepted": result.accepted, "rejected": len(result.rejected), "skipped": int(result.skipped), "grad-norm": float(result.grad_norm)})
        return ArrayRecord(self.core.strategy.global_weights()), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return []  # evaluation is centralized (the server's test set, EMA weights), as in `baffle run`

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        row = self.core.evaluate(server_round)
        return None if row is None else MetricRecord({"test-acc": row["test_acc"], "test-loss": row["test_loss"]})
