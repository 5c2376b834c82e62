"""SecAgg+ on the K-vectors: the server learns only the sample-weighted mean of the nodes' loss differences.

flwr 1.42 implements SecAgg+ only as a legacy workflow: ``SecAggPlusWorkflow`` needs a ``LegacyContext``
holding a legacy ``flwr.server.strategy.Strategy`` (``configure_fit``/``aggregate_fit``), and the node side
is ``secaggplus_mod`` reading a legacy ``FitRes``. There is no Message-API strategy hook for it. So the
secure mode runs ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` with ``SecureBaffleStrategy``
below, a thin legacy adapter over the same ``ServerCore`` (hence the same ``ServerStrategy`` math).

Quantization, explicitly (``QuantSpec``). Each node multiplies its K-vector by w = num_examples/max_weight
(max_weight = batch size, so w = 1 for a full batch), clips to [-clip, clip], maps to integers in
[0, 2**bits) with stochastic rounding (unbiased), adds pairwise and private masks mod 2**modulus_bits.
The server unmasks the sum, dequantizes and divides by the summed weights: the weighted mean. Error per
coordinate of one node: at most one step 2*clip/2**bits (zero mean); of the mean of n nodes: ~step/sqrt(n).
Sums of n nodes must not wrap around: n * 2**bits <= 2**modulus_bits (checked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from baffle.flower import records
from baffle.flower.server_core import ServerCore

log = logging.getLogger("baffle")


@dataclass(frozen=True)
class QuantSpec:
    clip: float = 0.5
    bits: int = 22
    modulus_bits: int = 32

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def step(self) -> float:
        return 2 * self.clip / self.levels

    def check(self, num_nodes: int) -> None:
        if num_nodes * self.levels > (1 << self.modulus_bits):
            raise ValueError(
                f"SecAgg+ sum of {num_nodes} nodes at {self.bits} bits can wrap modulo 2**{self.modulus_bits}; "
                f"lower secagg-bits to <= {self.modulus_bits - int(np.ceil(np.log2(max(num_nodes, 1))))}"
            )


def secure_mean_model(vectors: np.ndarray, weights: np.ndarray, spec: QuantSpec, max_weight: float, seed: int = 0) -> np.ndarray:
    """What the server gets from SecAgg+ for these vectors, computed with Flower's own quantize and
    dequantize (the masks cancel exactly, so they are left out). For measuring quantization's effect."""
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    state = np.random.get_state()
    np.random.seed(seed)  # Flower's stochastic rounding draws from numpy's global generator
    try:
        total_q = 0
        acc = np.zeros(vectors.shape[1], dtype=np.int64)
        for vec, w in zip(vectors, weights):
            q_ratio = round(w / max_weight * spec.levels)
            scaled = np.asarray(vec, dtype=np.float64) * (q_ratio / spec.levels)
            acc += quantize([scaled], spec.clip, spec.levels)[0].astype(np.int64)
            total_q += q_ratio
        acc %= 1 << spec.modulus_bits
        summed = dequantize([acc], spec.clip, spec.levels)[0] - (len(vectors) - 1) * spec.clip
        return (summed * spec.levels / total_q).astype(np.float32)
    finally:
        np.random.set_state(state)


def make_secure_strategy(core: ServerCore):
    from flwr.common import FitRes, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import Strategy as LegacyStrategy

    class SecureBaffleStrategy(LegacyStrategy):
        """Legacy adapter: plans out as FitIns, the unmasked weighted mean in, ``ServerCore`` does the rest."""

        def __init__(self) -> None:
            self.pending: int | None = None
            self.exclude: set[int] = set()  # node ids that failed earlier in this round (a retry leaves them out)

        def initialize_parameters(self, client_manager) -> Parameters:
            return ndarrays_to_parameters([])  # the model lives in ServerCore; nothing to fetch from a node

        def configure_fit(self, server_round, parameters, client_manager):
            r = server_round - 1
            if self.pending != r:  # a retry of round r (secagg_workflow) is still round r
                self._close_pending()
            picked = core.sample(r)
            proxies = client_manager.all()
            out = []
            for pid, nid in picked:
                if nid in self.exclude:
                    continue
                proxy = proxies.get(str(nid)) or next((p for p in proxies.values() if p.node_id == nid), None)
                if proxy is None:
                    log.warning("round %d: node %d (partition %d) is not connected; left out", r, nid, pid)
                    continue
                fitins = records.to_fitins(core.plan_payload(r, nid, send_weights=True))
                core.sent(nid, r, records.content_nbytes(_fitins_records(fitins)))
                out.append((proxy, fitins))
            self.pending = r
            return out

        def aggregate_fit(self, server_round, results, failures):
            r = server_round - 1
            # ``failures`` (bare errors, no node id, nothing for a node that never answered) is not used: the
            # workflow has already named and counted every failed node by stage (secagg_workflow._Recorder)
            mean, num = None, 0
            if results:
                # SecAggPlusWorkflow has put the same unmasked weighted mean into every result
                mean = parameters_to_ndarrays(results[0][1].parameters)[0]
                num = sum(int(res.num_examples) for _, res in results)
            up = sum(records.content_nbytes(_fitres_records(res)) for _, res in results)
            core.ingest_aggregate(r, mean, len(results), num, up, len(results))
            self.pending = None
            return None, {"contributors": len(results)}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None

        def evaluate(self, server_round, parameters):
            if server_round == 0:
                return None
            self._close_pending()
            row = core.evaluate(server_round)
            return None if row is None else (row["test_loss"], {"test_acc": row["test_acc"]})

        def _close_pending(self) -> None:
            """A round SecAgg+ halted (too few nodes) never reaches aggregate_fit: record it as skipped."""
            if self.pending is not None and self.pending not in core.history:
                log.warning("round %d: secure aggregation halted; round skipped", self.pending)
                core.skip_round(self.pending)
            self.pending = None

    def _fitins_records(fitins):
        from flwr.compat.common import recorddict_compat as compat

        return compat.fitins_to_recorddict(fitins, keep_input=True)

    def _fitres_records(res: FitRes):
        from flwr.compat.common import recorddict_compat as compat

        return compat.fitres_to_recorddict(res, keep_input=True)

    return SecureBaffleStrategy()


SECAGG_MAX_RETRIES = 2  # retries of a halted SecAgg+ round with the nodes that have not failed in it


def run_secure(grid, context, core: ServerCore) -> None:
    """Train every round through SecAgg+ (``RobustSecAggPlusWorkflow``): before each attempt the node map is
    refreshed from what the nodes report (a restarted node rejoins, a vanished one is not sampled) and the
    nodes that failed earlier in the round are left out."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow

    from baffle.flower.secagg_workflow import RobustSecAggPlusWorkflow
    from baffle.flower.strategy import refresh_nodes

    o = core.opts
    spec = QuantSpec(o.secagg_clip, o.secagg_bits, o.secagg_modulus_bits)
    spec.check(max(core.num_partitions, 1))
    shares = int(o.secagg_num_shares) if o.secagg_num_shares > 1 else float(o.secagg_num_shares)
    threshold = int(o.secagg_threshold) if o.secagg_threshold > 1 else float(o.secagg_threshold)
    strategy = make_secure_strategy(core)

    def prepare(round_idx: int, grid, exclude: set[int]) -> None:
        refresh_nodes(core, grid, o.round_timeout_s, forget_gone=True)
        strategy.exclude = set(exclude)

    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=core.cfg.run.rounds), strategy=strategy)
    workflow = DefaultWorkflow(
        fit_workflow=RobustSecAggPlusWorkflow(
            core,
            prepare,
            max_retries=SECAGG_MAX_RETRIES,
            num_shares=shares,
            reconstruction_threshold=threshold,
            max_weight=float(core.cfg.federation.batch_size),
            clipping_range=spec.clip,
            quantization_range=spec.levels,
            modulus_range=1 << spec.modulus_bits,
            timeout=o.round_timeout_s,
        )
    )
    workflow(grid, legacy)
