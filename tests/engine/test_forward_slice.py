"""estimator.forward_slice: a forward-only client may push its minibatch through in pieces (it needs one scalar)."""

import numpy as np
import pytest
import torch
from torch import nn

from baffle import estimator
from baffle.config import Config, ConfigError
from baffle.engine import LoopEngine, MaskedEngine, make_engine
from baffle.models import build_model
from baffle.protocol import noise


def _data(n: int = 13):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 14, 14, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("scheme", ["forward", "central"])
@pytest.mark.parametrize("forward_slice", [1, 4, 5])
def test_sliced_losses_equal_the_whole_batch_and_no_forward_sees_more(forward_slice, scheme):
    torch.manual_seed(0)
    model = build_model("lenet_small", in_channels=1, num_classes=10, image_size=14).eval()
    sizes: list[int] = []  # the batch size of every forward the model sees
    model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    params = estimator.select_parameters(model)
    x, y = _data()
    seeds = noise.round_seeds(3, 0, 6)
    whole = LoopEngine()(model, params, x, y, seeds, 1e-2, scheme)
    assert set(sizes) == {13}
    sizes.clear()
    sliced = make_engine("loop", forward_slice=forward_slice)(model, params, x, y, seeds, 1e-2, scheme)
    assert max(sizes) == forward_slice and sum(sizes) == 13 * (7 if scheme == "forward" else 12)
    np.testing.assert_allclose(sliced, whole, rtol=0, atol=5e-6)  # float32 rounding of the reduction only
    masked = MaskedEngine(np.ones(estimator.num_elements(params), bool), forward_slice)(model, params, x, y, seeds, 1e-2, scheme)
    assert masked.tobytes() == sliced.tobytes()


def test_a_batchnorm_in_training_mode_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(196, 8), nn.BatchNorm1d(8), nn.Linear(8, 10)).train()
    params = estimator.select_parameters(model)
    x, y = _data()
    with pytest.raises(ValueError, match="2 is a BatchNorm using batch statistics"):
        LoopEngine(4)(model, params, x, y, noise.round_seeds(0, 0, 2), 1e-2)
    model.eval()  # running statistics: every sample is on its own, slicing is exact in arithmetic
    LoopEngine(4)(model, params, x, y, noise.round_seeds(0, 0, 2), 1e-2)


def test_config_refuses_bad_values_and_the_batched_engine():
    for bad in (-1, 1.5, True, "4"):
        cfg = Config()
        cfg.estimator.engine = "loop"
        cfg.estimator.forward_slice = bad
        with pytest.raises(ConfigError, match="estimator.forward_slice must be an integer >= 0"):
            cfg.validate()
    cfg = Config()
    cfg.estimator.forward_slice = 2
    with pytest.raises(ConfigError, match="set estimator.engine='loop'"):
        cfg.validate()
    with pytest.raises(ValueError, match="batched engine"):
        make_engine("batched", forward_slice=2)
    cfg.estimator.engine = "loop"
    cfg.validate()


def test_a_sliced_run_learns_like_the_whole_batch_run(monkeypatch):
    from baffle.engine import loop
    from baffle.sim.loop import Simulation

    seen: set[int] = set()  # the forward_slice every loss was evaluated with: the key must reach the engine
    real = loop.batch_loss
    monkeypatch.setattr(loop, "batch_loss", lambda *a: seen.add(a[4]) or real(*a))

    def run(forward_slice: int) -> dict:
        cfg = Config()
        cfg.apply_overrides(["run.rounds=6", "run.eval_every=6", "run.checkpoint_every=0", "run.threads=1",
                             "data.num_clients=3", "data.train_subset=600", "data.test_subset=300",
                             "data.eval_train_samples=0",
                             "estimator.engine=loop", "estimator.fuse_clients=false",
                             f"estimator.forward_slice={forward_slice}"])
        return Simulation(cfg.validate(), None, progress=False).run()

    whole = run(0)
    assert seen == {0}
    seen.clear()
    sliced = run(2)
    assert seen == {2}
    assert abs(whole["final_test_acc"] - sliced["final_test_acc"]) <= 0.02
    assert whole["total_forward_passes"] == sliced["total_forward_passes"]  # slices are not extra passes
