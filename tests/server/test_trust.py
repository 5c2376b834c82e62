"""federation.aggregator='fltrust': the server scores K-vectors against its own root-batch K-vector."""

from __future__ import annotations

import numpy as np
import pytest

from baffle.server.trust import TrustAggregator
from baffle.sim.loop import Simulation
from baffle.testing import tiny


def test_flipped_vectors_get_no_weight_and_no_vector_outweighs_the_median_length():
    rng = np.random.default_rng(0)
    r = rng.normal(size=20)
    honest = r + 0.5 * rng.normal(size=(6, 20))
    hostile = np.stack([-r, -10 * r, 100 * r])
    agg = TrustAggregator(lambda seeds: r, num_clients=9, decay=0.0)
    out = agg.aggregate(np.vstack([honest, hostile]).astype(np.float32), list(range(9)), np.arange(20))
    assert agg.last_weights[6] == 0 and agg.last_weights[7] == 0  # pointing away: no weight
    median = np.median(np.linalg.norm(np.vstack([honest, hostile]), axis=1))
    assert np.linalg.norm(out) <= median * (1 + 1e-5)  # x100 is clipped to the median length
    assert np.dot(out, r) / (np.linalg.norm(out) * np.linalg.norm(r)) > 0.9


def test_reputation_remembers_a_consistent_attacker():
    r = np.ones(10)
    agg = TrustAggregator(lambda seeds: r, num_clients=2, decay=0.9)
    for _ in range(20):
        agg.aggregate(np.stack([r, -r]).astype(np.float32), [0, 1], np.arange(10))
    assert agg.reputation[1] < -0.8 and agg.reputation[0] > 0.8
    # one round in which the attacker agrees buys it little weight
    agg.aggregate(np.stack([r, r]).astype(np.float32), [0, 1], np.arange(10))
    assert agg.last_weights[1] < 0.25 * agg.last_weights[0]


def test_no_trusted_client_steps_along_the_reference():
    r = np.arange(1.0, 6.0)
    out = TrustAggregator(lambda s: r, 1).aggregate(-np.ones((1, 5), np.float32), [0], np.arange(5))
    np.testing.assert_allclose(out, r)


def test_fltrust_run_gives_attackers_no_weight_and_resumes_bit_identically(tmp_path):
    over = {"federation.aggregator": "fltrust", "federation.attack": "scale_neg10", "federation.attack_fraction": 0.25,
            "federation.trust_root_samples": 32}
    sim = Simulation(tiny(4, **over), None, progress=False)
    seen = []
    real = sim.fed.strategy.trust.aggregate

    def spy(vectors, ids, seeds):
        out = real(vectors, ids, seeds)
        seen.append(dict(sim.fed.strategy.trust.last_weights))
        return out

    sim.fed.strategy.trust.aggregate = spy
    sim.run()
    attackers = sim.runner.attackers
    att = [w[a] for w in seen for a in attackers if a in w]
    honest = [x for w in seen for i, x in w.items() if i not in attackers]
    assert attackers and att and np.mean(att) < 0.25 * np.mean(honest)
    # crash after round 2, resume: the reputation comes back from the checkpoint
    full = Simulation(tiny(4, **over), tmp_path / "a", progress=False)
    full.run()
    first = Simulation(tiny(4, **over), tmp_path / "b", progress=False)
    real_round = first.runner.run_round

    def crash_at_2(r):
        if r == 2:
            raise KeyboardInterrupt
        return real_round(r)

    first.runner.run_round = crash_at_2
    with pytest.raises(KeyboardInterrupt):
        first.run()
    second = Simulation(tiny(4, **over), tmp_path / "b", progress=False)
    assert second.resume_or_start()
    second.run()
    a, b = full.fed.strategy.model.state_dict(), second.fed.strategy.model.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    np.testing.assert_array_equal(full.fed.strategy.trust.reputation, second.fed.strategy.trust.reputation)
