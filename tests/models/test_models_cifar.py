"""The 32x32 colour models (baffle.models_cifar): WRN-10-2 as in the paper's code, and cnn_cifar_small."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from baffle.models import build_model, count_flops, num_parameters
from baffle.models_cifar import CNN_CIFAR_SMALL, CifarCNN, WideResNet


def test_wrn10_2_is_the_papers_shape() -> None:
    """FengHZ/BAFFLE model/wideresnet.py, depth=10 width=2: stem 16 (3x3, bias), one pre-activation block per
    stage at 32/64/128, strides 1/2/2, GroupNorm max(2, C//16) groups without affine, Hardswish, 1x1 shortcuts."""
    model = build_model("wrn10_2", in_channels=3, image_size=32)
    assert isinstance(model, WideResNet)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (3, 16, 3, 1),
        (16, 32, 3, 1), (32, 32, 3, 1), (16, 32, 1, 1),
        (32, 64, 3, 2), (64, 64, 3, 1), (32, 64, 1, 2),
        (64, 128, 3, 2), (128, 128, 3, 1), (64, 128, 1, 2),
    ]  # fmt: skip
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(not g.affine and g.num_groups == max(2, g.num_channels // 16) for g in norms)
    assert sorted({g.num_channels for g in norms}) == [16, 32, 64, 128]
    assert all(isinstance(m, nn.Hardswish) for m in model.modules() if isinstance(m, (nn.Hardswish, nn.ReLU, nn.GELU)))
    # conv weights (with the stem's bias) + the 128 -> 10 classifier
    assert num_parameters(model) == 302_794 == sum(c.weight.numel() for c in convs) + 16 + 128 * 10 + 10


def test_cnn_cifar_small_shape_and_size() -> None:
    model = build_model("cnn_cifar_small", in_channels=3, image_size=32)
    assert isinstance(model, CifarCNN)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert tuple(c.out_channels for c in convs) == tuple(CNN_CIFAR_SMALL["channels"])
    assert all(c.kernel_size[0] == CNN_CIFAR_SMALL["kernel_size"] for c in convs)
    n = num_parameters(model)
    # every conv weight + bias, and the classifier on the flattened (32 / 2**stages)^2 map
    side = 32 // 2 ** len(convs)
    assert n == sum(c.weight.numel() + c.out_channels for c in convs) + convs[-1].out_channels * side * side * 10 + 10
    wrn = build_model("wrn10_2", in_channels=3, image_size=32)
    # the point of the design: far fewer parameters and a far cheaper forward than WRN-10-2
    assert n * 10 < num_parameters(wrn)
    assert count_flops(model, (3, 32, 32)) * 10 < count_flops(wrn, (3, 32, 32))


@pytest.mark.parametrize("size", [16, 32])
def test_cnn_cifar_small_follows_the_resolution(size: int) -> None:
    model = build_model("cnn_cifar_small", in_channels=3, image_size=size)
    out = model(torch.randn(5, 3, size, size))
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    assert num_parameters(build_model("cnn_cifar_small", in_channels=3, image_size=16)) < num_parameters(
        build_model("cnn_cifar_small", in_channels=3, image_size=32))


def test_cifar_cnn_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at least 8x8"):
        CifarCNN(3, 10, image_size=7, channels=(4, 4, 4))
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        CifarCNN(3, 10, kernel_size=4)
    with pytest.raises(ValueError, match="at least one stage"):
        CifarCNN(3, 10, channels=())


def test_cifar_cnn_batch_norm_drops_the_cancelled_bias() -> None:
    convs = [m for m in CifarCNN(3, 10, norm="batch").modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)
    convs = [m for m in CifarCNN(3, 10, norm="group").modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)


def test_cnn_cifar_small_learns_a_separable_toy_task() -> None:
    """A few backprop steps must reduce the loss on a colour-coded toy task (the model can learn at all)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 3, 96))
    x = torch.randn(96, 3, 16, 16) * 0.3
    x[torch.arange(96), y] += 1.0  # the class is the brightest channel
    model = build_model("cnn_cifar_small", in_channels=3, num_classes=3, image_size=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
