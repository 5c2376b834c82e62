"""DP on the scalars: clipping, calibrated noise, reproducibility, and the accountant's epsilon."""

import json

import numpy as np
import pytest

from baffle import privacy
from baffle.config import ConfigError
from baffle.protocol.messages import Upload
from baffle.sim.loop import Simulation
from baffle.testing import tiny


def test_clip_bounds_the_norm_and_keeps_small_vectors():
    v = np.full(16, 1.0, np.float32)
    assert np.isclose(np.linalg.norm(privacy.clip_l2(v, 0.5)), 0.5, rtol=1e-6)
    small = np.full(16, 1e-3, np.float32)
    assert np.array_equal(privacy.clip_l2(small, 0.5), small)


def test_local_noise_has_the_calibrated_scale_and_is_reproducible():
    u = Upload(2, 5, np.zeros(20000, np.float32), 16)
    a = privacy.privatize_upload(u, clip=0.1, noise_multiplier=2.0, seed=0)
    assert a.loss_diffs.dtype == np.float32 and a.client_id == 2 and a.round == 5
    assert abs(a.loss_diffs.std() - 0.2) < 0.01
    assert np.array_equal(a.loss_diffs, privacy.privatize_upload(u, 0.1, 2.0, 0).loss_diffs)
    other = privacy.privatize_upload(Upload(3, 5, u.loss_diffs, 16), 0.1, 2.0, 0)
    assert not np.array_equal(a.loss_diffs, other.loss_diffs)  # each client its own noise


def test_central_mean_clips_each_vector_and_noises_the_sum_once():
    vectors = np.stack([np.full(4, 100.0), np.full(4, -100.0), np.zeros(4)]).astype(np.float32)
    exact = privacy.central_mean(vectors, clip=1.0, noise_multiplier=0.0, seed=0, round_idx=0)
    assert np.allclose(exact, 0.0, atol=1e-7)  # +C and -C cancel: no client outweighs the clip
    big = np.ones((10, 40000), np.float32) * 1e-6
    noisy = privacy.central_mean(big, clip=1.0, noise_multiplier=3.0, seed=0, round_idx=1)
    assert abs(noisy.std() - 3.0 / 10) < 0.01  # N(0, (zC)^2) on the sum, divided by 10


def test_epsilon_behaves_like_a_privacy_budget():
    eps = lambda z, T, m=10: privacy.epsilon("central", z, 1e-5, rounds=T, num_clients=100, clients_per_round=m)  # noqa: E731
    sub = eps(2.0, 100)  # subsampled without replacement: the slow part of the accountant, computed twice
    assert eps(1.0, 100) > sub > 0  # more noise, less epsilon
    assert eps(2.0, 200, m=100) > eps(2.0, 100, m=100) > sub  # more rounds cost more; subsampling amplifies
    assert privacy.epsilon("central", 0.0, 1e-5, rounds=5, num_clients=10, clients_per_round=10) == float("inf")
    assert privacy.epsilon("local", 2.0, 1e-5, max_participations=0) == 0.0
    # a known value: one Gaussian mechanism, noise std / sensitivity = 1 (z = 2 over 2C), delta 1e-5
    one = privacy.epsilon("local", 2.0, 1e-5, max_participations=1)
    assert 3.5 < one < 5.5


def test_run_reports_epsilon_per_evaluation_and_grows(tmp_path):
    cfg = tiny(rounds=4, **{"privacy.mode": "central", "privacy.noise_multiplier": 1.0, "privacy.clip": 0.1, "run.eval_every": 2})
    summary = Simulation(cfg, tmp_path, progress=False).run()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["privacy_mode"] for r in rows] == ["central", "central"]
    assert 0 < rows[0]["epsilon"] < rows[1]["epsilon"] == summary["epsilon"]
    expect = privacy.epsilon("central", 1.0, 1e-5, rounds=4, num_clients=4, clients_per_round=4)
    assert rows[1]["epsilon"] == pytest.approx(expect)


def test_local_dp_uploads_are_clipped_and_noised_before_validation(monkeypatch):
    cfg = tiny(**{"privacy.mode": "local", "privacy.noise_multiplier": 0.0, "privacy.clip": 1e-4})
    sim = Simulation(cfg, None, progress=False)
    seen = {}
    real = sim.fed.strategy.validate
    monkeypatch.setattr(sim.fed.strategy, "validate", lambda ups, r, e=None, length=None: (seen.setdefault("u", ups), real(ups, r, e, length))[1])
    sim.runner.run_round(0)
    assert all(np.linalg.norm(u.loss_diffs) <= 1e-4 * (1 + 1e-5) for u in seen["u"])


def test_privacy_config_is_validated():
    with pytest.raises(ConfigError, match="privacy.mode"):
        tiny(**{"privacy.mode": "global"})
    with pytest.raises(ConfigError, match="privacy.clip"):
        tiny(**{"privacy.mode": "local", "privacy.clip": 0})
    with pytest.raises(ConfigError, match="privacy.delta"):
        tiny(**{"privacy.mode": "local", "privacy.delta": 1.0})
    with pytest.raises(ConfigError, match="aggregator='mean'"):
        tiny(**{"privacy.mode": "central", "federation.aggregator": "median"})
    tiny(**{"privacy.mode": "local", "federation.aggregator": "median"})  # local noise + robust aggregation is fine
