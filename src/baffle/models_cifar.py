"""Models for 32x32 colour images (CIFAR-10): the paper's WRN-10-2 and a compact CNN for forward-only training.

* ``wrn10_2`` (:class:`WideResNet`) -- the BAFFLE paper's model for CIFAR-10, as in its code (FengHZ/BAFFLE,
  ``model/wideresnet.py`` with ``depth=10, width=2``): pre-activation, a 16-channel 3x3 stem with bias, one basic
  block per stage at widths 32/64/128 (strides 1/2/2), non-affine GroupNorm with ``max(2, C // 16)`` groups,
  Hardswish, a final norm -> act -> global average pool -> linear; Kaiming-uniform convolutions and a
  Xavier-uniform classifier with zero bias.  302,794 parameters and ~89 MFLOP (2 x multiply-adds) per 32x32 image.
* ``cnn_cifar_small`` (:class:`CifarCNN`) -- not in the paper: a plain stack of conv -> norm -> act -> 2x2
  max-pool stages and one linear classifier on the flattened map, sized for the zeroth-order estimator, whose
  error grows like ``sqrt(n / K)``.  Its shape, three 3x3 stages at widths 8/16/32 on 32x32 inputs, was chosen
  by a backprop capacity check (``experiments/cifar_capacity.py``, docs/cifar.md): 11,162 parameters and
  1.6 MFLOP per image (27x fewer parameters and 55x fewer FLOPs than WRN-10-2), within ~2 points of the
  16-32-32 shape (1.7x the parameters, 2.7x the FLOPs) after 1,000 backprop steps.

The shared rules (non-affine norms, no bias before BatchNorm, no in-place activations, creation order fixed by
torch's global RNG) are those of :mod:`baffle.models`, whose norm and activation factories are used here.
:func:`baffle.models.build_model` builds both by name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from baffle.models import _make_activation, _make_norm

__all__ = ["CifarCNN", "WideResNet", "CNN_CIFAR_SMALL"]


class _PreActBlock(nn.Module):
    """Pre-activation basic block: norm -> act -> conv3x3 -> norm -> act ->
    conv3x3, plus an identity or (norm -> act -> conv1x1) shortcut when the
    width or resolution changes (the BAFFLE code's variant)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, activation: str, norm: str) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            _make_norm(norm, in_ch),
            _make_activation(activation),
            nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
            _make_norm(norm, out_ch),
            _make_activation(activation),
            nn.Conv2d(out_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False),
        )
        self.shortcut: nn.Module
        if in_ch != out_ch or stride != 1:
            self.shortcut = nn.Sequential(
                _make_norm(norm, in_ch),
                _make_activation(activation),
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class WideResNet(nn.Module):
    """Pre-activation Wide-ResNet (depth ``6 * blocks_per_stage + 4``).

    With the defaults this is WRN-10-2 as in the BAFFLE code: a 3x3 stem with
    16 channels (with bias), one block per stage at widths 32/64/128
    (strides 1/2/2), a final norm -> act, global average pooling and a linear
    classifier; about 303k parameters for 3x32x32 inputs.  Convolutions use
    Kaiming-uniform initialisation and the classifier Xavier-uniform with zero
    bias, as in the paper's code.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        stem_channels: int = 16,
        widths: tuple[int, ...] = (32, 64, 128),
        blocks_per_stage: int = 1,
        activation: str = "hardswish",
        norm: str = "group",
    ) -> None:
        super().__init__()
        # The stem output goes to the first block's norm and shortcut norm; with
        # BatchNorm both cancel a per-channel bias exactly, so drop it there.
        self.stem = nn.Conv2d(in_channels, stem_channels, kernel_size=3, padding=1, bias=norm != "batch")
        blocks: list[nn.Module] = []
        prev = stem_channels
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(_PreActBlock(prev, width, stride, activation, norm))
                prev = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            _make_norm(norm, prev),
            _make_activation(activation),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(prev, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Paper-code initialisation (Kaiming convs, Xavier classifier, zero
        biases); deterministic given the global torch seed."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.head(self.blocks(self.stem(x))))


#: ``cnn_cifar_small``'s shape: per-stage widths, kernel size (see experiments/cifar_capacity.py and docs/cifar.md)
CNN_CIFAR_SMALL: dict[str, Any] = {"channels": (8, 16, 32), "kernel_size": 3}


class CifarCNN(nn.Module):
    """``len(channels)`` stages of conv(k x k, "same") -> norm -> act -> maxpool2, then flatten -> linear.

    Why this shape for forward-only training: every parameter is perturbed and estimated from K loss
    differences, so the model should spend its parameters where they buy accuracy.  Pooling after every stage
    keeps the convolutions cheap (the forward is what a client repeats K + 1 times per round); flattening
    the last small map keeps *where* a feature is, which global average pooling (``lenet``, WRN) throws away
    and which a small model cannot afford to relearn; the classifier's size grows with the map
    (``channels[-1] * (image_size // 2 ** len(channels)) ** 2`` features), which is why the stage count and
    the input resolution (``data.image_size``) are part of the design.  Convolutions keep their bias unless a
    BatchNorm follows (which cancels it exactly).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        image_size: int = 32,
        channels: tuple[int, ...] = (8, 16, 32),
        kernel_size: int = 3,
        activation: str = "hardswish",
        norm: str = "group",
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("CifarCNN needs at least one stage (channels is empty)")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CifarCNN kernel_size must be odd and positive ('same' padding), got {kernel_size}")
        side = image_size // 2 ** len(channels)
        if side < 1:
            raise ValueError(f"CifarCNN with {len(channels)} 2x2 poolings needs images of at least "
                             f"{2 ** len(channels)}x{2 ** len(channels)}, got {image_size}")
        layers: list[nn.Module] = []
        prev = in_channels
        for width in channels:
            layers += [
                nn.Conv2d(prev, width, kernel_size=kernel_size, padding=kernel_size // 2, bias=norm != "batch"),
                _make_norm(norm, width),
                _make_activation(activation),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
            prev = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Linear(prev * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.features(x))
