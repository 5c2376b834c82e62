"""The fused GroupNorm -> activation -> 2x2 max-pool kernel against the three torch ops it replaces."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baffle import estimator
from baffle.engine import BatchedEngine, LoopEngine
from baffle.engine.batched import norm_act_pool as nap
from baffle.engine.batched.program import Program
from baffle.models import build_model
from baffle.protocol import noise

pytestmark = pytest.mark.skipif(not nap.available(), reason=f"fused kernel: {nap.status()}")

ACTS = {0: lambda t: t, 1: F.relu, 2: F.hardswish}


def reference(t, groups, w, b, eps, act):
    return F.max_pool2d(ACTS[act](F.group_norm(t, groups, w, b, eps)), 2)


@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize("shape, groups", [((5, 8, 14, 14), 2), ((3, 32, 7, 7), 8), ((2, 6, 5, 9), 3), ((1, 4, 2, 2), 1)])
@pytest.mark.parametrize("affine", [False, True])
def test_matches_torch_to_float32_rounding(shape, groups, act, affine):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=g) * 4 + 1.5
    C = shape[1]
    w = torch.randn(C, generator=g) if affine else None
    b = torch.randn(C, generator=g) if affine else None
    got = nap.gn_act_pool2(t, groups, w, b, 1e-5, act)
    ref = reference(t, groups, w, b, 1e-5, act)
    assert got.shape == ref.shape  # odd rows/columns dropped, as max_pool2d's floor mode does
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_nan_propagates_like_torch_maximum():
    t = torch.randn(1, 2, 4, 4)
    t[0, 0, 0, 0] = float("nan")
    got = nap.gn_act_pool2(t, 1, None, None, 1e-5, 2)
    assert torch.isnan(got).all()  # the NaN poisons its group's statistics, as in torch


def test_constant_group_is_finite():
    got = nap.gn_act_pool2(torch.full((2, 4, 6, 6), 3.0), 2, None, None, 1e-5, 1)
    assert torch.equal(got, torch.zeros(2, 4, 3, 3))


def test_bad_groups_and_affine_sizes_are_refused():
    t = torch.randn(1, 6, 4, 4)
    with pytest.raises(ValueError, match="groups"):
        nap.gn_act_pool2(t, 4, None, None, 1e-5, 0)
    with pytest.raises(ValueError, match="channels"):
        nap.gn_act_pool2(t, 3, torch.ones(5), None, 1e-5, 0)


def test_covers_only_what_it_computes():
    assert nap.covers(torch.zeros(2, 4, 6, 6))
    assert not nap.covers(torch.zeros(2, 4, 6, 6, dtype=torch.float64))
    assert not nap.covers(torch.zeros(2, 4, 6))
    assert not nap.covers(torch.zeros(2, 4, 1, 6))


# ---- in the batched engine's program -----------------------------------------------------------------------


class TwoReaders(nn.Module):
    """GroupNorm whose output is read twice: the chain must not be fused (the activation's input is needed)."""

    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.act, self.pool = nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4 * 2, 3)

    def forward(self, x):
        g = self.gn(self.conv(x))
        return self.fc(torch.cat([self.pool(self.act(g)).flatten(1), self.pool(g).flatten(1)], 1))


def test_program_fuses_exactly_the_chains():
    lenet = build_model("lenet_small", in_channels=1, num_classes=10, image_size=14, activation="hardswish", norm="group")
    assert [(n.target, a.target, p.target) for n, (a, p) in Program(lenet).fused.items()] == [
        ("features.1", "features.2", "features.3"), ("features.5", "features.6", "features.7")]
    assert Program(TwoReaders()).fused == {}
    no_norm = build_model("lenet_small", in_channels=1, num_classes=10, image_size=14, activation="relu", norm="none")
    assert Program(no_norm).fused == {}


@pytest.mark.parametrize("norm, activation", [("group", "hardswish"), ("group", "relu")])
def test_engine_with_and_without_the_kernel_agree(monkeypatch, norm, activation):
    torch.manual_seed(0)
    model = build_model("lenet_small", in_channels=1, num_classes=10, image_size=14, activation=activation, norm=norm)
    params = estimator.select_parameters(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 14, 14, generator=g), torch.randint(0, 10, (16,), generator=g)
    seeds = noise.round_seeds(0, 0, 6)
    fused = BatchedEngine()(model, params, x, y, seeds, 1e-3, "forward", noise="v2-gauss")
    monkeypatch.setattr(nap, "_lib", None)  # as on a machine without a C compiler
    plain = BatchedEngine()(model, params, x, y, seeds, 1e-3, "forward", noise="v2-gauss")
    rel_diff = abs(fused - plain).max() / abs(plain).max()
    assert rel_diff < 1e-3, rel_diff  # loss differences of sigma 1e-3: float32 rounding of the norm, relative to them


class CeilPool(nn.Module):
    """A ceil-mode pool keeps the odd border's partial windows: neither tiling kernel may take it."""

    def __init__(self):
        super().__init__()
        self.conv, self.gn, self.act = nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU()
        self.pool, self.fc = nn.MaxPool2d(2, ceil_mode=True), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.gn(self.conv(x)))).flatten(1))


def test_ceil_mode_pool_is_not_fused_and_keeps_its_border():
    torch.manual_seed(0)
    model = CeilPool()
    assert Program(model).fused == {}
    params = estimator.select_parameters(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 7, 7, generator=g), torch.randint(0, 3, (4,), generator=g)
    seeds = noise.round_seeds(0, 0, 3)
    got = BatchedEngine()(model, params, x, y, seeds, 1e-3, "forward", noise="v2-gauss")
    ref = LoopEngine()(model, params, x, y, seeds, 1e-3, "forward", noise="v2-gauss")
    assert abs(got - ref).max() <= 1e-3 * abs(ref).max() + 1e-6
