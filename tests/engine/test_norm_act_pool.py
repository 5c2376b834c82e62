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
    got, ref = batched_and_loop(model, estimator.select_parameters(model), (4, 1, 7, 7), 3)
    assert abs(got - ref).max() <= 1e-3 * abs(ref).max() + 1e-6


def batched_and_loop(model, params, shape, K):
    """The batched engine's and the reference loop's K loss differences on one seeded random batch of ``shape``
    (3 classes)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(shape, generator=g), torch.randint(0, 3, (shape[0],), generator=g)
    seeds = noise.round_seeds(0, 0, K)
    got = BatchedEngine()(model, params, x, y, seeds, 1e-3, "forward", noise="v2-gauss")
    return got, LoopEngine()(model, params, x, y, seeds, 1e-3, "forward", noise="v2-gauss")


# ---- the shared-input convolution fused in front of the chain ----------------------------------------------------


def conv_reference(x, w, b, stride, pad, groups, gw, gb, act):
    """Per-member convolution of the shared input, then the three torch ops; w: (P, C1, Cin, k, k)."""
    out = F.conv2d(x, w.reshape(-1, *w.shape[2:]), b, stride=stride, padding=pad)
    return reference(out, groups, gw, gb, 1e-5, act)


@pytest.mark.parametrize("act", [0, 1, 2])
@pytest.mark.parametrize(
    "N, cin, size, P, C1, k, stride, groups_per_member",
    [(5, 1, 14, 4, 8, 5, 1, 2),  # the default job's first layer (196 positions: a masked last tile)
     (3, 3, 9, 3, 6, 3, 1, 3),  # filters not a multiple of 4, odd map (pooling drops the last row and column)
     (2, 2, 16, 2, 16, 3, 2, 4),  # strided, 64 positions (whole tiles only)
     (1, 1, 4, 1, 1, 3, 1, 1)])
def test_conv_chain_matches_torch_to_float32_rounding(N, cin, size, P, C1, k, stride, groups_per_member, act):
    from baffle.engine.batched.kernels import shared_im2col

    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, cin, size, size, generator=g)
    w = torch.randn(P, C1, cin, k, k, generator=g) * 0.3
    b, gw, gb = (torch.randn(P * C1, generator=g) for _ in range(3))
    conv = nn.Conv2d(cin, C1, k, stride=stride, padding=k // 2)
    for aligned in (False, True):  # rows padded to a multiple of 8 values or not: the same values
        cols, Ho, Wo = shared_im2col(conv, x, None, aligned=aligned)
        got = nap.conv_gn_act_pool2(cols, Ho, Wo, P, w, b, groups_per_member * P, gw, gb, 1e-5, act)
        ref = conv_reference(x, w, b, stride, k // 2, groups_per_member * P, gw, gb, act)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_conv_chain_member_values_do_not_depend_on_the_call(monkeypatch):
    """A member's values are the same bits alone, among others, with padded rows, and on the portable path: the
    engine's chunking and the CPU's vector width cannot change a client's loss differences."""
    from baffle.engine.batched.kernels import shared_im2col

    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(6, 1, 14, 14, generator=g), torch.randn(5, 8, 1, 5, 5, generator=g), torch.randn(40, generator=g)
    conv = nn.Conv2d(1, 8, 5, padding=2)
    cols, H, W = shared_im2col(conv, x)
    padded, _, _ = shared_im2col(conv, x, aligned=True)
    assert padded.shape[-1] == 200 and cols.shape[-1] == 196
    every = nap.conv_gn_act_pool2(cols, H, W, 5, w, b, 10, None, None, 1e-5, 2)
    alone = nap.conv_gn_act_pool2(padded, H, W, 1, w[3], b[24:32], 2, None, None, 1e-5, 2)
    assert torch.equal(alone, every[:, 24:32])
    monkeypatch.setenv("BAFFLE_FUSED_PORTABLE", "1")  # the loop a CPU without AVX2/FMA runs
    assert torch.equal(nap.conv_gn_act_pool2(padded, H, W, 5, w, b, 10, None, None, 1e-5, 2), every)


def test_conv_chain_refuses_groups_that_straddle_members():
    cols = torch.randn(1, 9, 16)
    with pytest.raises(ValueError, match="groups"):
        nap.conv_gn_act_pool2(cols, 4, 4, 2, torch.randn(8, 9), None, 3, None, None, 1e-5, 0)  # 2 members, 3 groups
    with pytest.raises(ValueError, match="positions"):
        nap.conv_gn_act_pool2(cols, 5, 5, 2, torch.randn(8, 9), None, 2, None, None, 1e-5, 0)


class ConvOfConv(nn.Module):
    """The second convolution reads a per-member tensor: only the first may be fused with its chain."""

    def __init__(self):
        super().__init__()
        self.c1, self.g1, self.a1, self.p1 = nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.MaxPool2d(2)
        self.c2, self.g2, self.a2, self.p2 = nn.Conv2d(4, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Hardswish(), nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        return self.fc(self.p2(self.a2(self.g2(self.c2(self.p1(self.a1(self.g1(self.c1(x)))))))).flatten(1))


def test_program_fuses_only_convolutions_of_the_input():
    lenet = build_model("lenet_small", in_channels=1, num_classes=10, image_size=14, activation="hardswish", norm="group")
    assert [(c.target, gn.target) for c, gn in Program(lenet).conv_fused.items()] == [("features.0", "features.1")]
    assert [(c.target, gn.target) for c, gn in Program(ConvOfConv()).conv_fused.items()] == [("c1", "g1")]
    assert Program(TwoReaders()).conv_fused == {}  # its GroupNorm starts no chain


@pytest.mark.parametrize("trainable", [None, ["c2.*", "g2.*", "fc.*"]])
def test_engine_with_the_conv_chain_matches_the_loop(trainable):
    """With the first convolution trained (fused) and frozen (its output shared: not fused), against the loop."""
    torch.manual_seed(0)
    model = ConvOfConv()
    got, ref = batched_and_loop(model, estimator.select_parameters(model, trainable), (12, 1, 8, 8), 5)
    assert abs(got - ref).max() <= 1e-3 * abs(ref).max() + 1e-6
