"""baffle_multistep: S local forward-only steps per round, S x K scalars up, the server replays trajectories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baffle.config import ConfigError
from baffle.methods.multistep import step_seeds
from baffle.sim.loop import Simulation
from baffle.testing import tiny


def _flat(model) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def test_server_replay_lands_where_the_client_went():
    """One client, server SGD with lr 1 and nothing else: the new global model IS the client's end point."""
    cfg = tiny(1, **{"run.method": "baffle_multistep", "federation.local_steps": 3, "data.num_clients": 1,
                     "optim.name": "sgd", "optim.lr": 1.0, "optim.momentum": 0.0, "optim.weight_decay": 0.0,
                     "optim.clip": 0.0, "optim.warmup": 0, "optim.cosine": False, "optim.ema_decay": 0.0,
                     "federation.local_lr": 0.05})
    sim = Simulation(cfg, None, progress=False)
    start = _flat(sim.fed.strategy.model).copy()
    sim.run()
    server, client = _flat(sim.fed.strategy.model), _flat(sim.fed.clients[0].model)
    assert not np.allclose(server, start)
    np.testing.assert_allclose(server, client, rtol=0, atol=1e-6)


def test_uploads_are_s_times_k_scalars_and_costs_are_counted():
    cfg = tiny(2, **{"run.method": "baffle_multistep", "federation.local_steps": 3})
    summary = Simulation(cfg, None, progress=False).run()
    K, S, clients = cfg.estimator.K, 3, cfg.data.num_clients
    assert summary["upload_bytes_per_client_per_round"] == 16 + 4 * S * K
    assert summary["total_upload_bytes"] == 2 * clients * (16 + 4 * S * K)
    assert summary["total_forward_passes"] == 2 * clients * S * (K + 1)
    assert summary["total_backward_passes"] == 0 and summary["rejected_uploads"] == 0


def test_a_wrong_length_upload_is_rejected_by_the_shared_validation():
    from baffle.protocol.messages import Upload
    from baffle.server.ingest import ingest_uploads

    cfg = tiny(1, **{"run.method": "baffle_multistep", "federation.local_steps": 2})
    sim = Simulation(cfg, None, progress=False)
    seeds = step_seeds(cfg.run.seed, 0, cfg.estimator.K, 2)
    bad = Upload(0, 0, np.zeros(cfg.estimator.K, dtype=np.float32), 4)  # K scalars where S x K are due
    before = _flat(sim.fed.strategy.model).copy()
    result = ingest_uploads(sim.fed.strategy, [bad], 0, {0}, length=seeds.size, step=lambda ok: 1 / 0)
    assert result.skipped and result.rejected[0].code == "wrong_length"
    assert np.array_equal(before, _flat(sim.fed.strategy.model))


def test_step_seeds_are_shared_per_step_and_apart_from_other_streams():
    s = step_seeds(0, 5, 8, 3)
    assert s.shape == (3, 8) and len({tuple(r) for r in s}) == 3
    from baffle.protocol.noise import round_seeds

    assert not np.array_equal(s[0], round_seeds(0, 5, 8)) and not np.array_equal(s[0], round_seeds(0, 5, 8, 1, 1))


@pytest.mark.parametrize("override, match", [({"estimator.seed_pool": 32}, "seed_pool"),
                                             ({"federation.aggregator": "fltrust"}, "fltrust")])
def test_unsupported_combinations_are_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        tiny(1, **{"run.method": "baffle_multistep", **override})


def _run_flat(rounds: int, **extra) -> np.ndarray:
    cfg = tiny(rounds, **{"run.method": "baffle_multistep", "federation.local_steps": 2, **extra})
    sim = Simulation(cfg, None, progress=False)
    sim.run()
    return _flat(sim.fed.strategy.model)


def test_a_robust_aggregator_defends_multistep_rounds_against_an_attacker():
    """The S x K vectors pass through the attack and the aggregator like K-vectors: one client of four sending
    -10x its honest vector drags the mean trajectory away from the clean run; the coordinate-wise median stays near."""
    sgd = {"optim.name": "sgd", "optim.momentum": 0.0, "optim.clip": 0.0}  # steps in proportion to the vector
    clean = _run_flat(3, **sgd)
    attacked = {"federation.attack": "scale_neg10", "federation.attack_fraction": 0.25, **sgd}
    dist_mean = np.linalg.norm(_run_flat(3, **attacked) - clean)
    dist_median = np.linalg.norm(_run_flat(3, **attacked, **{"federation.aggregator": "median"}) - clean)
    assert dist_mean > 0 and dist_median < 0.5 * dist_mean, (dist_mean, dist_median)


def test_local_dp_clips_each_multistep_upload_as_one_vector(monkeypatch):
    """privacy.mode='local' acts on what leaves a multistep client: its whole S x K vector, clipped to C."""
    import baffle.methods.multistep as multistep

    seen = []
    real = multistep.ingest_uploads

    def spy(strategy, uploads, *args, **kwargs):
        seen.extend(uploads)
        return real(strategy, uploads, *args, **kwargs)

    monkeypatch.setattr(multistep, "ingest_uploads", spy)
    clip = 1e-5
    cfg = tiny(1, **{"run.method": "baffle_multistep", "federation.local_steps": 2, "privacy.mode": "local",
                     "privacy.clip": clip, "privacy.noise_multiplier": 0.0})
    summary = Simulation(cfg, None, progress=False).run()
    assert len(seen) == cfg.data.num_clients and "epsilon" in summary
    for u in seen:
        assert u.loss_diffs.size == 2 * cfg.estimator.K
        assert np.linalg.norm(u.loss_diffs) == pytest.approx(clip, rel=1e-4)  # honest norms are far above 1e-5
