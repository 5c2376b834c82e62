"""SecAgg+ that survives a node failing at any stage: Flower's ``SecAggPlusWorkflow`` with the dropouts it
cannot handle fixed, every failure recorded by node id, partition and stage, and a retry when it halts.

What flwr 1.42's ``SecAggPlusWorkflow`` does with a node that fails (error reply or no reply at all) at each
of its stages, reproduced on the in-memory grid (``baffle.flower.secagg_faults``) and in a deployment:

=========================  ==============================================================================
0 ``setup``                the node leaves ``active_node_ids`` but stays in ``sampled_node_ids``; in the
                           unmask stage the server looks for shares of its secrets, has none, logs "Not
                           enough shares to recover secret" and halts: **the whole round is lost**
1 ``share_keys``           the same: it never distributed shares of its secrets
2 ``collect_masked_vectors`` handled: its neighbours send shares of its key sk1 and the server removes the
                           pairwise masks it shares with them; the round costs only its contribution
3 ``unmask``               handled: its vector is in the sum and its mask seed is rebuilt from the others'
                           shares, as long as every node keeps >= threshold shares among those answering
=========================  ==============================================================================

Flower also keeps neither the node id of a failure nor any trace of a node that never answered (a killed
SuperNode): its ``failures`` list holds bare errors, so baffle counted 0 failures and logged "node -1".

The fix for stages 0 and 1 is exact, not a retry: a node masks its vector only with the neighbours whose
encrypted shares it received (``secaggplus_mod._collect_masked_vectors``: ``available_clients``), so a node
that failed before distributing its shares has no pairwise mask in anybody's vector, and the round is
correct without it. ``RobustSecAggPlusWorkflow`` rebases the round after stage 1 on the nodes that did
distribute shares (``sampled_node_ids`` and every neighbour set intersected with them), so such a failure
costs that node's contribution only. Every stage's messages go through ``_Recorder``, which names each node
sent a message that did not answer, or answered with an error. If the protocol still halts (fewer than the
threshold answered at some stage), the round is retried with the sampled nodes that have not failed in it,
at most ``max_retries`` times while >= 2 remain; otherwise the round is skipped and counted as lost.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from flwr.app import Message
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from baffle.flower.server_core import ServerCore

log = logging.getLogger("baffle")

STAGE_NAMES = ("setup", "share_keys", "collect_masked_vectors", "unmask")  # flwr's Stage values, in order


@dataclass
class StageFailure:
    """One node that did not complete one stage of one attempt."""

    node: int
    partition: int | None
    stage: str
    attempt: int
    reason: str


@dataclass
class RoundRecord:
    """What SecAgg+ did in one round: who was asked, who is in the sum, who failed where, how many tries."""

    round: int
    sampled: list[int] = field(default_factory=list)  # partitions asked in the first attempt
    contributed: list[int] = field(default_factory=list)  # partitions whose masked vectors are in the sum
    contributed_nodes: list[int] = field(default_factory=list)  # their node ids (a restarted node has a new one)
    failures: list[StageFailure] = field(default_factory=list)
    attempts: int = 0
    lost: bool = False
    halted_at: list[str] = field(default_factory=list)  # the stage each failed attempt halted at


@dataclass
class SecAggLedger:
    """The SecAgg+ counters of a run; ``metrics`` goes into every metrics row, ``record`` into result.json."""

    rounds: list[RoundRecord] = field(default_factory=list)

    def metrics(self) -> dict[str, int]:
        return {
            "secagg_retries": sum(max(r.attempts - 1, 0) for r in self.rounds),
            "secagg_failed_nodes": sum(len(r.failures) for r in self.rounds),
            "secagg_lost_rounds": sum(r.lost for r in self.rounds),
        }

    def record(self) -> dict[str, Any]:
        by_stage = {s: sum(f.stage == s for r in self.rounds for f in r.failures) for s in STAGE_NAMES}
        return {**self.metrics(), "failures_by_stage": by_stage, "rounds": [asdict(r) for r in self.rounds]}


class _Recorder:
    """A Grid that remembers, per ``send_and_receive``, who was sent a message and what came back."""

    def __init__(self, grid) -> None:
        self._grid = grid
        self.sent: list[int] = []
        self.replies: list[Message] = []

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        msgs = list(messages)
        self.sent = [m.metadata.dst_node_id for m in msgs]
        self.replies = list(self._grid.send_and_receive(msgs, timeout=timeout))
        return self.replies

    def failed(self, timeout: float | None) -> dict[int, str]:
        """node id -> why, for every node sent a message in the last exchange that did not answer cleanly."""
        ok, why = set(), {}
        for m in self.replies:
            nid = m.metadata.src_node_id
            if m.has_error():
                why[nid] = f"error reply: {m.error.reason}"
            else:
                ok.add(nid)
        wait = f"within {timeout:g} s" if timeout else "before the grid gave up"
        return {nid: why.get(nid, f"no reply {wait}") for nid in dict.fromkeys(self.sent) if nid not in ok}


class RobustSecAggPlusWorkflow(SecAggPlusWorkflow):
    """``SecAggPlusWorkflow`` whose rounds survive a node failing at any stage (see the module docstring).

    ``prepare(round, grid, exclude)`` is called before every attempt: it refreshes the node -> partition map
    (a restarted node rejoins) and tells the strategy which node ids failed earlier in this round.
    """

    def __init__(self, core: ServerCore, prepare: Callable[[int, Any, set[int]], None], max_retries: int = 2, **kwargs: Any):
        super().__init__(**kwargs)
        self.core = core
        self.prepare = prepare
        self.max_retries = max_retries
        self.ledger = SecAggLedger()

    def __call__(self, grid, context) -> None:
        r = int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]) - 1
        rec = RoundRecord(r)
        self.ledger.rounds.append(rec)
        failed: set[int] = set()
        while True:
            self.prepare(r, grid, failed)
            before = len(rec.failures)
            if self._attempt(grid, context, rec):
                break
            failed |= {f.node for f in rec.failures[before:]}
            left = [p for p, nid in self.core.sample(r) if nid not in failed]
            new = len(rec.failures) > before
            if not new or rec.attempts > self.max_retries or len(left) < 2:
                why = "no node failed" if not new else ("retries used up" if rec.attempts > self.max_retries else f"{len(left)} node(s) left")
                log.error("round %d: SecAgg+ halted at stage %s after %d attempt(s) (%s); round lost", r, rec.halted_at[-1], rec.attempts, why)
                rec.lost = True
                if r not in self.core.history:
                    self.core.skip_round(r)
                break
            log.warning("round %d: SecAgg+ halted at stage %s; retrying with partitions %s", r, rec.halted_at[-1], left)
        self.core.driver_metrics = self.ledger.metrics()
        self.core.driver_record = {"secagg": self.ledger.record()}

    def _attempt(self, grid, context, rec: RoundRecord) -> bool:
        rec.attempts += 1
        state = WorkflowState()
        wire = _Recorder(grid)
        in_sum: list[int] = []
        in_sum_nodes: list[int] = []
        steps = (self.setup_stage, self.share_keys_stage, self.collect_masked_vectors_stage, self.unmask_stage)
        for name, step in zip(STAGE_NAMES, steps):
            wire.sent, wire.replies = [], []
            try:
                ok = step(wire, context, state)
            except Exception as e:  # a protocol error on the server side costs this attempt, not the run
                log.error("round %d: SecAgg+ stage %s raised %s: %s", rec.round, name, type(e).__name__, e)
                ok = False
            if name == "setup" and rec.attempts == 1:
                rec.sampled = sorted(p for nid in state.sampled_node_ids if (p := self.core.partition_of.get(nid)) is not None)
            for nid, why in wire.failed(self.timeout).items():
                self._failed(rec, nid, name, why)
            if ok and name == "share_keys":
                _rebase_on_distributors(state)
            if ok and name == "collect_masked_vectors":  # these vectors are in the sum, whoever answers stage 3
                in_sum = sorted(p for nid in state.active_node_ids if (p := self.core.partition_of.get(nid)) is not None)
                in_sum_nodes = sorted(state.active_node_ids)
            if ok and name == "unmask":
                rec.contributed, rec.contributed_nodes = in_sum, in_sum_nodes
            if not ok:
                rec.halted_at.append(name)
                return False
        return True

    def _failed(self, rec: RoundRecord, nid: int, stage: str, why: str) -> None:
        f = StageFailure(nid, self.core.partition_of.get(nid), stage, rec.attempts, why)
        rec.failures.append(f)
        self.core.node_failed(nid, rec.round, f"SecAgg+ stage {stage} (attempt {rec.attempts}): {why}")


def _rebase_on_distributors(state: WorkflowState) -> None:
    """After stage 1: the round consists of the nodes that distributed their shares, nothing else.

    A node that failed at stage 0 or 1 sent no share of its secrets, so the unmask stage cannot (and need
    not) recover them: no other node masked its vector with it. Dropping it from ``sampled_node_ids`` keeps
    it out of the DEAD lists (whose shares nobody holds) and out of the server's share collection; dropping
    it from the neighbour sets keeps the server from removing pairwise masks that were never added.
    """
    kept = set(state.active_node_ids)
    state.sampled_node_ids = set(kept)
    state.nid_to_neighbours = {nid: nbrs & kept for nid, nbrs in state.nid_to_neighbours.items() if nid in kept}
