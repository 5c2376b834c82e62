"""One round of the simulator: who answers, what their uploads become on the way, and the method's body.

Kept apart from the loop so other drivers (benchmarks, tests) can run rounds one at a time.
"""

from __future__ import annotations

import logging

from baffle import privacy
from baffle.methods import get_method
from baffle.plan_state import load_plan_state
from baffle.protocol.messages import Upload
from baffle.server.ingest import RoundResult
from baffle.sim import attacks, faults
from baffle.sim.factory import Federation
from baffle.sim.sampling import clients_per_round, sample_clients

log = logging.getLogger("baffle")


def make_ledger(cfg) -> privacy.PrivacyLedger | None:
    p = cfg.privacy
    if p.mode == "none":
        return None
    return privacy.PrivacyLedger(p.mode, p.noise_multiplier, p.delta, cfg.data.num_clients, clients_per_round(cfg))


class RoundRunner:
    def __init__(self, fed: Federation):
        self.fed = fed
        cfg = fed.cfg
        self.method = get_method(cfg.run.method)
        self.attackers = attacks.attacker_ids(cfg.data.num_clients, cfg.federation.attack_fraction, cfg.run.seed)
        self.ledger = make_ledger(cfg)
        self.last: RoundResult | None = None
        # the round's plan state (what every client starts from): the tensors that change (the model, or its
        # trainable subset; baffle.plan_state), and the fingerprint of the frozen rest (None: nothing frozen)
        self.weights: dict = {}
        self.frozen: bytes | None = None
        self.plan_bytes = self.method.download_bytes(cfg, fed.strategy.plan_nbytes())  # per sampled client

    def availability(self, sampled: list[int], round_idx: int) -> faults.Availability:
        """Which sampled clients answer this round: decided before any upload is computed."""
        f = self.fed.cfg.federation
        return faults.availability(sampled, round_idx, self.fed.cfg.run.seed, f.dropout_rate, f.straggler_delay_s, f.timeout_s)

    def postprocess(self, uploads: list[Upload], round_idx: int) -> list[Upload]:
        """What actually leaves the clients: local DP noise (honest clients), then Byzantine corruption.

        Applied to computed Upload objects, so it holds for every way of computing them."""
        cfg = self.fed.cfg
        p, f = cfg.privacy, cfg.federation
        if p.mode == "local":
            uploads = [privacy.privatize_upload(u, p.clip, p.noise_multiplier, cfg.run.seed) for u in uploads]
        return attacks.apply_attack(uploads, f.attack, self.attackers, cfg.run.seed, round_idx)

    def client_uploads(self, sampled: list[int], round_idx: int) -> list[Upload]:
        """All sampled clients answer the round's plan (the client model holds the global weights)."""
        plan = self.fed.strategy.plan(round_idx, send_weights=False)
        if any(getattr(self.fed.clients[i], "needs_weights", False) for i in sampled):
            # ONNX Runtime clients (baffle.mixed) cannot share the torch model: their plan carries the weights
            from baffle.mixed import with_numpy_weights

            arrays_plan = with_numpy_weights(plan, self.fed.strategy.global_weights())
            return [c.step(arrays_plan if getattr(c, "needs_weights", False) else plan) for c in (self.fed.clients[i] for i in sampled)]
        if self.fed.cfg.estimator.fuse_clients:  # one batched pass for all clients; None when not applicable
            from baffle.engine.fused import fused_uploads

            fused = fused_uploads([self.fed.clients[i] for i in sampled], plan)
            if fused is not None:
                return fused
        return [self.fed.clients[i].step(plan) for i in sampled]

    def run_round(self, round_idx: int) -> RoundResult:
        fed, cfg, c = self.fed, self.fed.cfg, self.fed.counters
        all_sampled = sample_clients(cfg, round_idx)
        avail = self.availability(all_sampled, round_idx)
        sampled = avail.answered  # from here on only the clients that answer do any work
        if self.ledger is not None:
            self.ledger.record(sampled)
        self.weights, self.frozen = fed.strategy.plan_weights(), fed.strategy.frozen_sha256()
        for client_model in {id(cl.model): cl.model for cl in fed.clients if hasattr(cl, "model")}.values():
            # the shared torch model (ONNX clients have none) keeps the frozen part it was built with
            load_plan_state(client_model, self.weights, fed.strategy.plan_names, self.frozen)
        if not sampled:
            log.warning("round %d skipped: none of the %d sampled clients answered", round_idx, len(all_sampled))
            result = RoundResult(round_idx, 0, skipped=True)
        else:
            result = self.method.run_round(self, sampled, all_sampled, round_idx)
        result.sampled, result.answered = len(all_sampled), len(sampled)
        result.failed, result.timed_out, result.round_time_s = len(avail.failed), len(avail.timed_out), avail.round_time_s
        c.add_round(result)
        c.download_bytes += len(all_sampled) * self.plan_bytes  # every sampled client got the plan, answering or not
        c.sim_time_s += avail.round_time_s
        self.last = result
        return result
