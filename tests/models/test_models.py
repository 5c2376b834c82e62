"""Tests for baffle.models: shapes, sizes, validation, BN statelessness, FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from baffle.models import (
    ACTIVATIONS,
    MODEL_NAMES,
    NORMS,
    build_model,
    count_flops,
    num_parameters,
    resolve_model_name,
)

SHAPES = [(1, 28, 28), (1, 32, 32), (3, 32, 32)]
# models whose activation and norm layers follow model.activation / model.norm (rf_white's are fixed: its own test)
CONFIGURABLE = tuple(n for n in MODEL_NAMES if n != "rf_white")


def _build(name: str, shape: tuple[int, int, int], **kw: str) -> nn.Module:
    return build_model(name, in_channels=shape[0], image_size=shape[1], num_classes=10, **kw)


def test_constants_are_tuples() -> None:
    assert isinstance(MODEL_NAMES, tuple) and set(MODEL_NAMES) == {"lenet", "wrn10_2", "mlp", "lenet_small", "cnn_cifar_small", "rf_cnn", "rf_white"}
    assert isinstance(ACTIVATIONS, tuple) and set(ACTIVATIONS) == {"hardswish", "relu", "gelu"}
    assert isinstance(NORMS, tuple) and set(NORMS) == {"group", "batch", "none"}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = _build(name, shape)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


def test_num_classes_respected() -> None:
    for name in MODEL_NAMES:
        model = build_model(name, num_classes=7)
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_lenet_parameter_count() -> None:
    n = num_parameters(build_model("lenet", in_channels=1, image_size=28))
    assert abs(n - 27_000) <= 3_000, n
    # Global average pooling: the count does not depend on the image size.
    assert num_parameters(build_model("lenet", in_channels=1, image_size=32)) == n
    # Exact value of the paper architecture (non-affine norms, conv biases).
    assert n == 416 + 25_664 + 650


def test_lenet_small_parameter_count() -> None:
    # conv1 8*(25+1) + conv2 16*(8*25+1) + classifier (16*3*3)*10+10 at 14x14; the head grows with the image.
    assert num_parameters(build_model("lenet_small", image_size=14)) == 208 + 3_216 + 1_450
    assert num_parameters(build_model("lenet_small", image_size=28)) == 208 + 3_216 + 7_850
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("lenet_small", image_size=3)


def test_rf_cnn_shape_and_seeded_frozen_features() -> None:
    """rf_cnn: 32 random 5x5 filters (frozen in its configs), pooled to a 7x7 grid at any image size, so the
    classifier has 1,568 * 10 + 10 = 15,690 parameters at 28x28 and 32x32; the same seed rebuilds the same filters
    (what lets every party regenerate the frozen part instead of downloading it)."""
    for size, channels in ((28, 1), (32, 3)):
        model = build_model("rf_cnn", in_channels=channels, image_size=size)
        assert num_parameters(model.classifier) == 15_690
        assert num_parameters(model) == 15_690 + 32 * (channels * 25 + 1)
    torch.manual_seed(5)
    a = build_model("rf_cnn", image_size=28)
    torch.manual_seed(5)
    b = build_model("rf_cnn", image_size=28)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    with pytest.raises(ValueError, match="7x7 grid"):
        build_model("rf_cnn", image_size=3)


def test_wrn_parameter_count() -> None:
    n = num_parameters(build_model("wrn10_2", in_channels=3, image_size=32))
    assert 0.8 * 303_000 <= n <= 1.2 * 303_000, n


def test_wrn_alias_builds_same_model() -> None:
    torch.manual_seed(1)
    a = build_model("wrn-10-2", in_channels=3, image_size=32)
    torch.manual_seed(1)
    b = build_model("wrn10_2", in_channels=3, image_size=32)
    assert type(a) is type(b)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert resolve_model_name("WRN-10-2") == "wrn10_2"


def test_mlp_parameter_count() -> None:
    n = num_parameters(build_model("mlp", in_channels=1, image_size=28))
    assert n == (784 * 128 + 128) + (128 * 64 + 64) + (64 * 10 + 10)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"name": "resnet18"}, "resnet18"),
        ({"name": "lenet", "activation": "tanh"}, "tanh"),
        ({"name": "lenet", "norm": "layer"}, "layer"),
    ],
)
def test_bad_choices_raise_with_valid_options(kwargs: dict[str, str], bad: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ValueError) as info:
        build_model(name, **kwargs)
    msg = str(info.value)
    assert bad in msg
    if "activation" in kwargs:
        valid = ACTIVATIONS
    elif "norm" in kwargs:
        valid = NORMS
    else:
        valid = MODEL_NAMES
    for option in valid:
        assert option in msg


@pytest.mark.parametrize("field", ["in_channels", "num_classes", "image_size"])
def test_non_positive_sizes_raise(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_model("lenet", **{field: 0})


@pytest.mark.parametrize("name", CONFIGURABLE)
def test_batchnorm_is_stateless(name: str) -> None:
    shape = (3, 32, 32)
    torch.manual_seed(0)
    model = _build(name, shape, norm="batch")
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert list(model.buffers()) == []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *shape))
        model(torch.randn(8, *shape) * 3 + 1)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("norm", NORMS)
def test_no_buffers_and_every_parameter_matters(name: str, norm: str) -> None:
    """Each parameter tensor must influence the output: a parameter with zero
    gradient would only add noise to the zeroth-order estimate."""
    shape = (3, 32, 32)
    torch.manual_seed(0)
    if name == "rf_white" and norm != "group":
        pytest.skip("rf_white's norm is fixed (test_rf_white_refuses_an_activation_or_norm)")
    model = _build(name, shape, **({} if name == "rf_white" else {"norm": norm}))
    assert list(model.buffers()) == []
    out = model(torch.randn(8, *shape))
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        # Exactly cancelled parameters (e.g. a bias right before BatchNorm) get
        # gradients ~1e-6 from rounding; real ones are orders of magnitude larger.
        assert p.grad.abs().max() > 1e-4, pname


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deterministic_given_seed(name: str) -> None:
    x = torch.randn(2, 1, 28, 28)
    torch.manual_seed(123)
    a = build_model(name)
    torch.manual_seed(123)
    b = build_model(name)
    torch.manual_seed(124)
    c = build_model(name)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


def test_rf_white_refuses_an_activation_or_norm() -> None:
    """rf_white's thresholded ReLU and per-sample norm are its design: asking for others is an error, not ignored."""
    from baffle.config import Config, ConfigError

    for kw in ({"activation": "gelu"}, {"norm": "batch"}):
        with pytest.raises(ValueError, match="rf_white has a fixed thresholded ReLU and a fixed per-sample norm"):
            build_model("rf_white", in_channels=3, image_size=32, **kw)
    cfg = Config()
    cfg.apply_overrides(["model.name=rf_white", "model.norm=none"])
    with pytest.raises(ConfigError, match="do not apply to rf_white"):
        cfg.validate()


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", CONFIGURABLE)
def test_all_activations_work(name: str, activation: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, activation=activation)
    kinds = {type(m) for m in model.modules()}
    expected = {"hardswish": nn.Hardswish, "relu": nn.ReLU, "gelu": nn.GELU}[activation]
    assert expected in kinds
    assert not (kinds & ({nn.Hardswish, nn.ReLU, nn.GELU} - {expected}))
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_count_flops_linear_exact() -> None:
    assert count_flops(nn.Linear(10, 5), (10,)) == 100


def test_count_flops_conv_exact() -> None:
    # 8 output channels * 6*6 positions * (3*3*3) MACs each, times 2.
    assert count_flops(nn.Conv2d(3, 8, kernel_size=3), (3, 8, 8)) == 2 * 8 * 36 * 27


def test_count_flops_lenet_plausible() -> None:
    model = build_model("lenet")
    flops = count_flops(model, (1, 28, 28))
    # conv1: 16*28*28*25 MACs, conv2: 64*14*14*400 MACs, fc: 64*10 MACs.
    expected = 2 * (16 * 28 * 28 * 25 + 64 * 14 * 14 * 400 + 64 * 10)
    assert flops == expected
    assert 1e6 < flops < 1e8


def test_count_flops_does_not_change_model() -> None:
    model = build_model("mlp", norm="batch")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_flops(model, (1, 28, 28)) > 0
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    bn_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))  # tracks running stats
    bn_before = {k: v.clone() for k, v in bn_model.state_dict().items()}
    count_flops(bn_model, (1, 8, 8))
    assert all(torch.equal(bn_before[k], v) for k, v in bn_model.state_dict().items())


def test_num_parameters_counts_trainable_only() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    assert num_parameters(model) == 15 + 8
    for p in model[0].parameters():
        p.requires_grad_(False)
    assert num_parameters(model) == 8
