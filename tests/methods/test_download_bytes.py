"""Bytes down: every method's plan to a sampled client is counted, by the same formula as the plan it sends.

The tiny federation trains a subset (``model.trainable``), so its plans ship the trainable tensors and the 32-byte
fingerprint of the frozen rest (``baffle.plan_state``); ``trainable_bytes`` computes that independently."""

from __future__ import annotations

import numpy as np
import pytest

from baffle.methods import download_bytes
from baffle.plan_state import FROZEN_SHA256_BYTES
from baffle.protocol.layout import matches
from baffle.protocol.messages import LOCAL_PLAN_HEADER_BYTES, PLAN_HEADER_BYTES, LocalPlan, RoundPlan, state_bytes
from baffle.sim.loop import Simulation
from baffle.testing import tiny


def trainable_bytes(sim) -> int:
    """Raw bytes of the parameters ``model.trainable`` selects (by the glob rule, not by baffle.plan_state)."""
    pats = sim.cfg.model.trainable
    return sum(p.numel() * p.element_size() for n, p in sim.fed.strategy.model.named_parameters() if matches(n, pats))


@pytest.mark.parametrize(
    "extra, seeds_per_plan",
    [
        ({}, "K"),  # baffle: the round's K direction seeds and the weights
        ({"run.method": "baffle_multistep", "federation.local_steps": 3}, "SK"),  # S x K step seeds
        ({"run.method": "fedsgd"}, "none"),  # the weights only
    ],
)
def test_rows_and_summary_count_one_plan_per_sampled_client_per_round(extra, seeds_per_plan):
    cfg = tiny(3, **{"federation.clients_per_round": 0.5, **extra})  # half the clients per round
    sim = Simulation(cfg, None, progress=False)
    summary = sim.run()
    weights = trainable_bytes(sim) + FROZEN_SHA256_BYTES  # the trainable tensors and the frozen part's fingerprint
    assert weights < state_bytes(sim.fed.strategy.model.state_dict()) / 3
    seeds = {"K": cfg.estimator.K, "SK": cfg.estimator.K * 3, "none": 0}[seeds_per_plan]
    per_plan = PLAN_HEADER_BYTES + 8 * seeds + weights
    sampled = 3 * max(1, int(0.5 * cfg.data.num_clients))
    assert summary["download_bytes_per_client_per_round"] == per_plan
    assert summary["total_download_bytes"] == sampled * per_plan


def test_the_cost_model_is_the_size_of_the_plan_the_server_builds():
    cfg = tiny(1)
    sim = Simulation(cfg, None, progress=False)
    plan = sim.fed.strategy.plan(0, send_weights=True)
    assert plan.nbytes == download_bytes(cfg, sim.fed.strategy.plan_nbytes())
    assert plan.nbytes == PLAN_HEADER_BYTES + 8 * cfg.estimator.K + trainable_bytes(sim) + FROZEN_SHA256_BYTES
    assert RoundPlan(0, np.zeros(5, np.uint64), 1e-3, "forward", 8).nbytes == PLAN_HEADER_BYTES + 40  # no weights


def test_a_dropped_client_still_got_the_plan():
    """Downloads count sampled clients, answering or not: the plan went out before the client dropped."""
    cfg = tiny(4, **{"federation.dropout_rate": 0.5})
    sim = Simulation(cfg, None, progress=False)
    summary = sim.run()
    per_plan = summary["download_bytes_per_client_per_round"]
    assert summary["answered_uploads"] < 4 * cfg.data.num_clients
    assert summary["total_download_bytes"] == 4 * cfg.data.num_clients * per_plan


@pytest.mark.parametrize("method", ["baffle_local", "fedavg"])
def test_epoch_level_methods_count_the_plan_they_send_and_the_weights_they_get_back(method):
    """Their plans ship the trainable tensors (+ fingerprint) and their clients upload those tensors alone."""
    cfg = tiny(1, **{"run.method": method, "federation.local_steps": 2})
    sim = Simulation(cfg, None, progress=False)
    s = sim.fed.strategy
    plan = LocalPlan(0, 0, 4, 1e-3, "forward", 8, 2, 0.01, s.plan_weights(), frozen_sha256=s.frozen_sha256())
    assert plan.nbytes == LOCAL_PLAN_HEADER_BYTES + trainable_bytes(sim) + FROZEN_SHA256_BYTES
    summary = sim.run()
    assert summary["download_bytes_per_client_per_round"] == plan.nbytes
    assert summary["upload_bytes_per_client_per_round"] == 12 + trainable_bytes(sim)


@pytest.mark.parametrize("method", ["baffle", "fedsgd", "fedavg"])
def test_a_full_model_run_ships_the_whole_state_as_before(method):
    """No subset configured: the plan is the whole state dict, no fingerprint (bytes as before this change)."""
    cfg = tiny(1, **{"run.method": method, "model.trainable": "[]", "estimator.K": 4})
    sim = Simulation(cfg, None, progress=False)
    state = sim.fed.strategy.model.state_dict()
    seeds = 4 if method == "baffle" else 0
    header = LOCAL_PLAN_HEADER_BYTES if method == "fedavg" else PLAN_HEADER_BYTES
    assert sim.fed.strategy.frozen_sha256() is None and sim.fed.strategy.plan_names == tuple(state)
    assert sim.run()["download_bytes_per_client_per_round"] == header + 8 * seeds + state_bytes(state)


def test_resuming_a_checkpoint_from_before_bytes_down_rebuilds_them(tmp_path):
    """A checkpoint written before bytes down were counted has no ``download_bytes``: the resumed run rebuilds them
    from the sampling (a pure function of the round), so its records equal an uninterrupted run's."""
    from baffle.config import Config
    from baffle.records import checkpoint
    from baffle.testing.crash import interrupted_run

    cfg = tiny(6, **{"federation.clients_per_round": 0.5})
    full = Simulation(cfg, tmp_path / "full", progress=False).run()
    part = tmp_path / "part"
    interrupted_run(cfg, part, at_round=4)
    state = checkpoint.load(part / "checkpoint.pt")
    del state["counters"]["download_bytes"]  # what a checkpoint of an older baffle holds
    checkpoint.save(part / "checkpoint.pt", state)

    sim = Simulation(Config.load(part / "config.toml"), part, progress=False)
    sim.resume()
    assert sim.start_round == 4
    assert sim.run()["total_download_bytes"] == full["total_download_bytes"] > 0
