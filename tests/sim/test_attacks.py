"""Byzantine clients: the attacks do what they say, and robust aggregators defeat them where a mean cannot."""

import numpy as np
import pytest

from baffle.server import aggregation
from baffle.sim import attacks
from baffle.config import ConfigError
from baffle.protocol.messages import Upload
from baffle.sim.rounds import RoundRunner
from baffle.sim.loop import Simulation
from baffle.testing import tiny


def test_attacker_set_is_fixed_seeded_and_sized():
    a = attacks.attacker_ids(10, 0.3, seed=0)
    assert len(a) == 3 and a == attacks.attacker_ids(10, 0.3, seed=0)
    assert attacks.attacker_ids(10, 0.3, seed=1) != a or len(a) == 10
    assert attacks.attacker_ids(10, 0.0, seed=0) == frozenset()
    assert len(attacks.attacker_ids(10, 0.1, seed=5)) == 1


@pytest.mark.parametrize("attack,factor", [("scale_neg10", -10), ("scale_100", 100), ("sign_flip", -1)])
def test_scaling_attacks(attack, factor):
    v = np.linspace(-1, 1, 8).astype(np.float32)
    out = attacks.corrupt(v, attack, 0, 3, 2)
    assert out.dtype == np.float32 and np.allclose(out, factor * v)


def test_noise_attack_is_large_garbage_and_reproducible():
    v = np.full(64, 1e-3, np.float32)
    a = attacks.corrupt(v, "noise", 0, 3, 2)
    assert np.array_equal(a, attacks.corrupt(v, "noise", 0, 3, 2))
    assert not np.array_equal(a, attacks.corrupt(v, "noise", 0, 4, 2))
    assert np.isfinite(a).all() and np.sqrt(np.mean(a.astype(np.float64) ** 2)) > 3e-3
    assert abs(np.corrcoef(a, np.arange(64))[0, 1]) < 0.5


def test_only_attackers_are_corrupted():
    ups = [Upload(i, 0, np.ones(4, np.float32), 8) for i in range(4)]
    out = attacks.apply_attack(ups, "sign_flip", frozenset({1, 3}), 0, 0)
    assert [float(u.loss_diffs[0]) for u in out] == [1.0, -1.0, 1.0, -1.0]
    assert out[0] is ups[0]


def _honest_and_hostile(attack, n=10, bad=3, K=200, seed=0):
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, 1e-3, K)
    honest = signal + rng.normal(0, 3e-4, (n, K))
    vectors = honest.copy()
    for i in range(bad):
        vectors[i] = attacks.corrupt(honest[i].astype(np.float32), attack, seed, 0, i)
    return signal, honest[bad:].mean(0), vectors.astype(np.float32)


@pytest.mark.parametrize("attack", ["scale_neg10", "scale_100", "sign_flip", "noise"])
def test_robust_aggregators_beat_the_mean_at_30_percent(attack):
    signal, honest_mean, vectors = _honest_and_hostile(attack)
    w = np.ones(len(vectors))
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    mean_cos = cos(aggregation.aggregate(vectors, w, "mean"), signal)
    for method in ("median", "trimmed_mean", "multi_krum"):
        agg = aggregation.aggregate(vectors, w, method, trim_fraction=0.3)
        assert cos(agg, signal) > 0.9, (method, cos(agg, signal))
    if attack == "scale_neg10":
        assert mean_cos < 0  # the mean walks uphill
    if attack == "sign_flip":  # the mean keeps the direction but loses most of the step: 0.7 - 0.3 = 0.4
        mean = aggregation.aggregate(vectors, w, "mean")
        assert float(mean @ signal / (signal @ signal)) < 0.5


def test_runner_corrupts_the_computed_uploads_of_attackers(monkeypatch):
    cfg = tiny(**{"federation.attack": "scale_neg10", "federation.attack_fraction": 0.5})
    sim = Simulation(cfg, None, progress=False)
    runner = sim.runner
    assert len(runner.attackers) == 2
    seen = {}
    real_validate = sim.fed.strategy.validate

    def spy(uploads, r, expected=None, length=None):
        seen["uploads"] = uploads
        return real_validate(uploads, r, expected, length)

    monkeypatch.setattr(sim.fed.strategy, "validate", spy)
    honest = RoundRunner.client_uploads(runner, [0, 1, 2, 3], 0)
    # the round recomputes the same uploads (same weights, fresh samplers are replayed via state)
    for cl, st in zip(sim.fed.clients, [Simulation(cfg, None, progress=False).fed.clients[i].state_dict() for i in range(4)]):
        cl.load_state_dict(st)
    result = runner.run_round(0)
    assert result.accepted == 4  # the attack passes validation: the aggregator must deal with it
    for h, u in zip(honest, seen["uploads"]):
        factor = -10 if u.client_id in runner.attackers else 1
        assert np.allclose(u.loss_diffs, factor * h.loss_diffs, rtol=1e-6, atol=0)


def test_attack_config_is_validated():
    with pytest.raises(ConfigError, match="federation.attack"):
        tiny(**{"federation.attack": "explode"})
    with pytest.raises(ConfigError, match="attack_fraction"):
        tiny(**{"federation.attack_fraction": 1.5})
    with pytest.raises(ConfigError, match="run.method 'baffle' or 'baffle_multistep', got 'fedavg'"):
        tiny(**{"federation.attack": "noise", "run.method": "fedavg"})


def test_multi_krum_keeps_the_close_vectors_and_equals_the_mean_without_byzantines():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 1, (10, 30)).astype(np.float32)
    w = rng.integers(1, 5, 10).astype(float)
    assert np.allclose(aggregation.aggregate(v, w, "multi_krum", 0.0), aggregation.aggregate(v, w, "mean"), atol=1e-6)
    far = v.copy()
    far[[2, 7]] *= 100
    kept = aggregation.aggregate(far, w, "multi_krum", 0.2)  # f = 2: both giants dropped
    honest = np.delete(np.arange(10), [2, 7])
    assert np.allclose(kept, aggregation.weighted_mean(v[honest], w[honest]), atol=1e-6)
    assert aggregation.aggregate(v[:1], w[:1], "multi_krum", 0.3).shape == (30,)  # one client: itself
