"""Server-side K-vector transforms and the lr warmup: exact properties, wired into ServerStrategy."""

import math

import numpy as np
import pytest
import torch

from baffle.config import Config, ConfigError
from baffle.models import build_model
from baffle.shaping import centered_ranks, shape_diffs
from baffle.server.strategy import ServerStrategy
from baffle.server.optim import lr_factor
from baffle.reconstruct import reconstruct


def test_baseline_removes_a_common_offset_exactly():
    rng = np.random.default_rng(0)
    d = rng.normal(size=50).astype(np.float32)
    assert np.allclose(shape_diffs(d + 3.0, "mean"), shape_diffs(d, "mean"), atol=1e-5)
    assert abs(float(shape_diffs(d, "mean").mean())) < 1e-6


def test_rank_shaping_is_monotone_invariant_and_keeps_the_spread():
    rng = np.random.default_rng(1)
    d = rng.normal(size=40)
    s = shape_diffs(d, shaping="rank")
    assert np.allclose(shape_diffs(np.exp(d), shaping="rank") / np.exp(d).std(), s / d.std(), atol=1e-5)
    assert np.isclose(s.std(), d.std(), rtol=1e-5)
    assert list(np.argsort(s)) == list(np.argsort(d))
    assert np.allclose(sorted(centered_ranks(d)), np.linspace(-0.5, 0.5, 40))
    assert np.all(shape_diffs(np.ones(5), shaping="rank") == 0)  # no spread, no step


def test_strategy_rebuilds_from_the_shaped_vector():
    torch.manual_seed(0)
    cfg = Config()
    cfg.apply_overrides(["estimator.K=8", "estimator.baseline=mean", "optim.clip=0"])
    strat = ServerStrategy(build_model("lenet"), cfg.validate())
    d = np.linspace(-1, 1, 8).astype(np.float32) + 5.0
    w0 = torch.cat([p.detach().reshape(-1) for _, p in strat.params]).clone()
    strat.apply_loss_diffs(0, d)
    step = torch.cat([p.detach().reshape(-1) for _, p in strat.params]) - w0
    kind = cfg.estimator.noise  # the directions the strategy used
    g = reconstruct(shape_diffs(d, "mean"), strat.seeds(0), cfg.estimator.sigma, strat.n, noise=kind)
    g_raw = reconstruct(d, strat.seeds(0), cfg.estimator.sigma, strat.n, noise=kind)
    # Adam's first step is -lr * sign(g) (plus weight decay): it follows the shaped estimate, not the raw one
    agree = float((torch.sign(step) == -torch.sign(torch.from_numpy(g))).float().mean())
    agree_raw = float((torch.sign(step) == -torch.sign(torch.from_numpy(g_raw))).float().mean())
    assert agree > 0.99 and agree_raw < 0.9


def test_warmup_then_schedule():
    cfg = Config()
    cfg.apply_overrides(["optim.warmup=4", "optim.cosine=true", "run.rounds=100"])
    f = [lr_factor(cfg, r) for r in range(6)]
    assert f[0] == pytest.approx(0.25 * 0.5 * (1 + math.cos(0))) and f[3] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 100)))
    assert f[0] < f[1] < f[2] < f[3] and f[4] < f[3]


@pytest.mark.parametrize(
    "overrides, message",
    [(["estimator.baseline=median"], "estimator.baseline"), (["estimator.shaping=sign"], "estimator.shaping"),
     (["optim.warmup=-1"], "optim.warmup"), (["estimator.baseline=mean", "run.method=fedsgd"], "run.method='baffle'")],
)
def test_bad_keys_are_refused(overrides, message):
    cfg = Config()
    cfg.apply_overrides(overrides)
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_seed_pool_cycles_through_a_fixed_set_of_directions():
    cfg = Config()
    cfg.apply_overrides(["estimator.K=4", "estimator.seed_pool=12"])
    strat = ServerStrategy(build_model("mlp", image_size=8), cfg.validate())
    blocks = [tuple(strat.seeds(r)) for r in range(7)]
    assert blocks[0] == blocks[3] == blocks[6] and len({blocks[0], blocks[1], blocks[2]}) == 3
    assert tuple(strat.plan(4).seeds) == blocks[1]  # what the clients are sent
    fresh = Config()
    fresh.apply_overrides(["estimator.K=4"])
    assert tuple(ServerStrategy(build_model("mlp", image_size=8), fresh.validate()).seeds(3)) != blocks[0]
    bad = Config()
    bad.apply_overrides(["estimator.K=4", "estimator.seed_pool=10"])
    with pytest.raises(ConfigError, match="seed_pool"):
        bad.validate()
