"""Dropouts and stragglers: deterministic, counted, and training still converges with 30% dropping."""

import json

import numpy as np
import pytest

from baffle.sim import faults
from baffle.config import ConfigError
from baffle.sim.rounds import RoundRunner
from baffle.sim.loop import Simulation
from baffle.testing import tiny


def test_availability_is_a_pure_function_of_seed_round_client():
    a = faults.availability(range(50), 3, seed=0, dropout_rate=0.3)
    b = faults.availability(range(50), 3, seed=0, dropout_rate=0.3)
    assert a == b
    assert faults.availability(range(50), 4, seed=0, dropout_rate=0.3).answered != a.answered
    assert sorted(a.answered + a.failed) == list(range(50)) and not a.timed_out


def test_dropout_rate_is_respected_on_average():
    n = sum(len(faults.availability(range(100), r, seed=1, dropout_rate=0.3).failed) for r in range(40))
    assert 0.25 < n / 4000 < 0.35
    assert faults.availability(range(10), 0, 0, dropout_rate=1.0).answered == []
    assert faults.availability(range(10), 0, 0).answered == list(range(10))


def test_stragglers_over_the_timeout_are_dropped_and_the_wait_is_recorded():
    av = faults.availability(range(200), 0, seed=2, delay_s=1.0, timeout_s=2.0)
    # exponential(mean 1 s): P(delay > 2 s) = e^-2 = 13.5%
    assert 0.07 < len(av.timed_out) / 200 < 0.2
    assert av.round_time_s == 2.0  # the server waited the whole timeout
    no_timeout = faults.availability(range(20), 0, seed=2, delay_s=1.0)
    assert len(no_timeout.answered) == 20 and 0 < no_timeout.round_time_s


def test_dropped_clients_do_no_work_and_metrics_count_them(tmp_path, monkeypatch):
    cfg = tiny(rounds=4, **{"federation.dropout_rate": 0.5, "run.eval_every": 1})
    computed = []
    real = RoundRunner.client_uploads

    def spy(self, sampled, r):
        computed.append(list(sampled))
        return real(self, sampled, r)

    monkeypatch.setattr(RoundRunner, "client_uploads", spy)
    Simulation(cfg, tmp_path, progress=False).run()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r, row in enumerate(rows):
        av = faults.availability([0, 1, 2, 3], r, cfg.run.seed, 0.5)
        assert row["round_sampled"] == 4 and row["round_answered"] == len(av.answered)
        if av.answered:
            assert av.answered in computed
    assert rows[-1]["answered_uploads"] + rows[-1]["failed_clients"] == 16
    assert 0 < rows[-1]["failed_clients"] < 16


def test_round_with_nobody_answering_is_skipped_cleanly():
    sim = Simulation(tiny(**{"federation.dropout_rate": 1.0}), None, progress=False)
    before = {k: v.clone() for k, v in sim.fed.strategy.model.state_dict().items()}
    result = sim.runner.run_round(0)
    assert result.skipped and result.answered == 0 and result.failed == 4
    for k, v in sim.fed.strategy.model.state_dict().items():
        assert np.array_equal(v.numpy(), before[k].numpy())


@pytest.mark.parametrize("method", ["fedsgd", "fedavg", "baffle_local"])
def test_other_methods_drop_clients_too(method):
    sim = Simulation(tiny(**{"run.method": method, "federation.dropout_rate": 0.5, "federation.local_steps": 1}), None, progress=False)
    result = sim.runner.run_round(0)
    assert result.accepted == result.answered == 4 - result.failed


def test_converges_with_30_percent_of_clients_dropping(tmp_path):
    cfg = tiny(
        rounds=60,
        **{
            "data.num_clients": 10,
            "federation.dropout_rate": 0.3,
            "estimator.K": 32,
            "optim.lr": 0.02,
            "run.eval_every": 60,
            "run.checkpoint_every": 0,
        },
    )
    summary = Simulation(cfg, tmp_path, progress=False).run()
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.6 * 600 < row["answered_uploads"] < 0.8 * 600  # about 70% of 60 rounds x 10 clients answered
    assert summary["final_test_acc"] > 0.5, summary  # chance is 0.1


def test_fault_config_is_validated():
    for key, bad in (("dropout_rate", 1.5), ("dropout_rate", -0.1), ("timeout_s", -1), ("straggler_delay_s", float("nan"))):
        with pytest.raises(ConfigError, match=f"federation.{key}"):
            tiny(**{f"federation.{key}": bad})
