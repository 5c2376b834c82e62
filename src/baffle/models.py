"""Model zoo for backpropagation-free federated learning.

BAFFLE estimates gradients from loss differences of randomly perturbed models
(Stein's identity).  The estimator's error grows like ``sqrt(n / K)`` with the
number of parameters ``n``, so the models here are deliberately small and
contain *only parameters that influence the loss*: a parameter with zero
gradient still receives a random perturbation and a noisy "gradient"
estimate, which costs accuracy for nothing.

The architectures follow the public BAFFLE code (FengHZ/BAFFLE):

* ``lenet``   -- two 5x5 convolutions (16 and 64 channels), one 2x2 max-pool,
  global average pooling and a single linear classifier (~27k parameters on
  MNIST).
* ``wrn10_2`` -- pre-activation Wide-ResNet, depth 10, widen factor 2: a
  16-channel stem and one basic block per stage at widths 32/64/128
  (~303k parameters on CIFAR-10); in :mod:`baffle.models_cifar`.
* ``mlp``     -- a small fully connected baseline (784-128-64-10 on MNIST).
* ``lenet_small`` -- not in the paper: LeNet-5's own shape (conv -> pool -> conv -> pool -> flatten ->
  linear) at 8/16 channels, ~4.9k parameters on 14x14 MNIST.  Built for the estimator's ``sqrt(n / K)``:
  5.5x fewer parameters than ``lenet`` and a far cheaper forward, and (with backprop) it learns MNIST
  much faster than the global-average-pooled ``lenet`` (docs/results.md).
* ``cnn_cifar_small`` -- not in the paper: the same idea for 32x32 colour images (conv -> norm -> act ->
  pool stages, flatten, linear), in :mod:`baffle.models_cifar`; its shape was chosen by a backprop capacity
  check (experiments/cifar_capacity.py, docs/cifar.md).
* ``rf_cnn`` -- not in the paper: one wide convolution meant to stay at its seeded random initialisation and a
  linear classifier that trains (``model.trainable = ["classifier.*"]``), in :mod:`baffle.models_rf`.
* ``rf_white`` -- not in the paper: the same route for colour images, with seeded random filters drawn in a
  whitened patch space (a fixed, data-free prior), thresholded ReLU, average pooling and a per-sample norm
  (:mod:`baffle.models_rf`).

Design choices shared by all models, and why:

* **Normalisation layers are not affine** (as in the paper's code).  Their
  scale/shift would add parameters that mostly duplicate the following
  convolution's weights, enlarging ``n`` for the zeroth-order estimator.
* **GroupNorm** (the paper's recommendation for forward-only training) uses
  ``max(2, C // 16)`` groups, i.e. the paper's rule: 2 groups for 16 or 32
  channels, 4 for 64, 8 for 128.  Batch statistics are a problem for
  perturbation-based training, group statistics are not.
* **BatchNorm is built with ``track_running_stats=False``**: it always
  normalises with the current batch's statistics and owns *no* buffers.
  Forward-only training evaluates many perturbed copies of the model; with
  running statistics each of those forwards would silently update the
  running mean/variance from a *perturbed* model, corrupting the state that
  is evaluated and shared.  The price is that evaluation also uses batch
  statistics (evaluate with reasonably large batches).
* Layers that feed straight into a BatchNorm have **no bias**, because the
  per-channel mean subtraction cancels such a bias exactly (its gradient is
  zero).  With GroupNorm a per-channel bias is only partly cancelled and is
  kept, as in the paper's code.
* Activations are never in-place, so models work with ``torch.func``
  (``functional_call``/``vmap``/``jvp``) and with perturbation code that
  re-uses inputs.
* Everything is created in a fixed order from torch's global RNG, so
  ``torch.manual_seed(s)`` followed by :func:`build_model` is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "MODEL_ALIASES",
    "MODEL_NAMES",
    "NORMS",
    "LeNet",
    "LeNetSmall",
    "MLP",
    "build_model",
    "count_flops",
    "num_parameters",
    "resolve_model_name",
]

# Canonical model names, their alternative spellings, activations (``hardswish`` is the paper's
# recommendation: smooth almost everywhere, cheap, ReLU-like) and norms accepted by :func:`build_model`:
# the one list of valid choices per key lives in the config layer.
from baffle.config.choices import ACTIVATIONS, MODEL_ALIASES, MODEL_NAMES, NORMS, TEXT_MODEL_NAMES, VISION_MODEL_NAMES  # noqa: E402

_ACTIVATION_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "hardswish": lambda: nn.Hardswish(inplace=False),
    "relu": lambda: nn.ReLU(inplace=False),
    "gelu": lambda: nn.GELU(),
}


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> str:
    """Return ``value`` if it is in ``valid``; otherwise raise a ValueError
    naming the bad value and the valid options (used by config validation)."""
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid options: {', '.join(valid)}")
    return value


def resolve_model_name(name: str) -> str:
    """Map a model name or alias (e.g. ``"wrn-10-2"``) to its canonical name.

    Raises ValueError naming the bad value and the valid names, so a config
    validator can call this instead of re-implementing alias handling.
    """
    key = name.strip().lower() if isinstance(name, str) else ""
    key = MODEL_ALIASES.get(key, key)
    if key not in MODEL_NAMES:
        valid = ", ".join(MODEL_NAMES + tuple(MODEL_ALIASES))
        raise ValueError(f"unknown model name {name!r}; valid options: {valid}")
    return key


def _make_activation(activation: str) -> nn.Module:
    """A fresh (non in-place) activation module."""
    return _ACTIVATION_FACTORIES[activation]()


def _group_count(channels: int) -> int:
    """Number of GroupNorm groups: the paper's ``max(2, C // 16)``, reduced
    to a divisor of ``C`` so any width is valid."""
    return math.gcd(channels, max(2, channels // 16))


def _make_norm(norm: str, channels: int, *, dims: int = 2) -> nn.Module:
    """A non-affine normalisation layer over ``channels`` features.

    ``dims`` is 2 for conv feature maps (N, C, H, W) and 1 for (N, C) vectors.
    BatchNorm never tracks running statistics (see the module docstring).
    """
    if norm == "group":
        return nn.GroupNorm(_group_count(channels), channels, affine=False)
    if norm == "batch":
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        return bn(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def _two_convs(in_channels: int, channels: tuple[int, int], activation: str, norm: str) -> list[nn.Module]:
    """The LeNet trunk both LeNets share: conv5x5(c1) -> norm -> act -> maxpool2 -> conv5x5(c2) -> norm -> act
    ("same" padding). A bias right before BatchNorm is cancelled exactly, so it is dropped there."""
    bias = norm != "batch"
    c1, c2 = channels
    return [
        nn.Conv2d(in_channels, c1, kernel_size=5, padding=2, bias=bias),
        _make_norm(norm, c1),
        _make_activation(activation),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Conv2d(c1, c2, kernel_size=5, padding=2, bias=bias),
        _make_norm(norm, c2),
        _make_activation(activation),
    ]


class LeNet(nn.Module):
    """LeNet as in the BAFFLE code: conv5x5(16) -> norm -> act -> maxpool2 ->
    conv5x5(64) -> norm -> act -> global average pool -> linear.

    Global average pooling makes the parameter count (and the classifier)
    independent of the image size, so the same model serves 28x28 and 32x32
    inputs.  Convolutions use padding 2 ("same").
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        channels: tuple[int, int] = (16, 64),
        activation: str = "hardswish",
        norm: str = "group",
    ) -> None:
        super().__init__()
        c2 = channels[1]
        self.features = nn.Sequential(*_two_convs(in_channels, channels, activation, norm), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.features(x))


class LeNetSmall(nn.Module):
    """LeNet-5's shape at forward-only size: conv5x5(c1) -> norm -> act -> maxpool2 -> conv5x5(c2) -> norm ->
    act -> maxpool2 -> flatten -> linear.

    Why not the paper's ``lenet``: its global average pooling throws away where a stroke is, so even backprop
    learns MNIST slowly with it, and its 64-channel conv holds 25.6k of its 27k parameters.  Keeping the
    spatial map and shrinking the widths gives ~4.9k parameters (14x14 input) that backprop trains to ~97%
    in a few hundred steps; the zeroth-order estimator's error falls with the parameter count.  The
    classifier's size depends on ``image_size`` (flattened ``c2 * (image_size // 4) ** 2`` features).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        image_size: int = 14,
        channels: tuple[int, int] = (8, 16),
        activation: str = "hardswish",
        norm: str = "group",
    ) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"lenet_small needs images of at least 4x4 (two 2x2 poolings), got {image_size}")
        c2 = channels[1]
        self.features = nn.Sequential(
            *_two_convs(in_channels, channels, activation, norm), nn.MaxPool2d(kernel_size=2, stride=2), nn.Flatten()
        )
        self.classifier = nn.Linear(c2 * (image_size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes)."""
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Flatten -> linear(hidden[0]) -> norm -> act -> linear(hidden[1]) ->
    norm -> act -> linear(num_classes).

    A small dense baseline (109k parameters on 28x28 grey images).  The
    ``norm`` choice applies to the hidden layers too, so that "batch" vs
    "group" comparisons cover every model; use ``norm="none"`` for a plain MLP.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 10,
        *,
        hidden: tuple[int, ...] = (128, 64),
        activation: str = "hardswish",
        norm: str = "group",
    ) -> None:
        super().__init__()
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for width in hidden:
            layers += [nn.Linear(prev, width, bias=bias), _make_norm(norm, width, dims=1), _make_activation(activation)]
            prev = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes); input (N, C, H, W) or (N, C*H*W)."""
        return self.classifier(self.features(x))


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def build_model(
    name: str,
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    activation: str = "hardswish",
    norm: str = "group",
) -> nn.Module:
    """Build one of :data:`MODEL_NAMES` (aliases in :data:`MODEL_ALIASES`).

    ``activation`` is one of :data:`ACTIVATIONS`, ``norm`` one of
    :data:`NORMS`; the defaults (Hardswish, GroupNorm) are what the BAFFLE
    paper recommends for forward-only training.  ``image_size`` only changes
    the MLP, ``lenet_small``, ``cnn_cifar_small`` and ``rf_cnn`` (the other conv nets end in global average pooling).  BatchNorm layers
    never keep running statistics (see the module docstring), so the
    returned model has no buffers and forwards never mutate its state.

    Raises ValueError for an unknown name/activation/norm, listing the valid
    options, and for non-positive sizes.
    """
    if name in TEXT_MODEL_NAMES:  # BERT text classifiers take token ids + mask, not images (baffle.nlp)
        from baffle.nlp.pretrained import build_text_model

        return build_text_model(name, num_classes)
    if name in VISION_MODEL_NAMES:  # pretrained EfficientNet-Lite: RGB images, frozen BN, upsamples small inputs (baffle.vision)
        from baffle.vision.pretrained import build_vision_model

        return build_vision_model(name, num_classes, in_channels=in_channels, image_size=image_size)
    canonical = resolve_model_name(name)
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("norm", norm, NORMS)
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("image_size", image_size)

    if canonical == "lenet":
        return LeNet(in_channels, num_classes, activation=activation, norm=norm)
    if canonical == "lenet_small":
        return LeNetSmall(in_channels, num_classes, image_size=image_size, activation=activation, norm=norm)
    if canonical in ("wrn10_2", "cnn_cifar_small"):  # the 32x32 colour models (baffle.models_cifar)
        from baffle.models_cifar import CNN_CIFAR_SMALL, CifarCNN, WideResNet

        if canonical == "wrn10_2":
            return WideResNet(in_channels, num_classes, activation=activation, norm=norm)
        return CifarCNN(in_channels, num_classes, image_size=image_size, activation=activation, norm=norm, **CNN_CIFAR_SMALL)
    if canonical == "rf_cnn":  # a frozen random convolution + a trained classifier (baffle.models_rf)
        from baffle.models_rf import RF_CNN, RandomFeatureCNN

        return RandomFeatureCNN(in_channels, num_classes, image_size=image_size, activation=activation, norm=norm, **RF_CNN)
    if canonical == "rf_white":  # whitened random features (ReLU, average pooling, per-sample norm) + a trained classifier
        from baffle.models_rf import RF_WHITE, WhitenedRandomFeatures

        if (activation, norm) != ("hardswish", "group"):
            raise ValueError(f"rf_white has a fixed thresholded ReLU and a fixed per-sample norm: activation={activation!r} / norm={norm!r} do not apply")

        return WhitenedRandomFeatures(in_channels, num_classes, image_size=image_size, **RF_WHITE)
    # canonical == "mlp"
    return MLP(in_channels * image_size * image_size, num_classes, activation=activation, norm=norm)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable scalars: the ``n`` that sets the zeroth-order
    estimator's error (shared parameters are counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs per sample of the model's convolution and linear layers (:func:`layer_flops`, summed)."""
    return sum(layer_flops(model, input_shape).values())


def layer_flops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Forward FLOPs per sample of each layer, by module name, counting ``2 * MACs`` of Conv1d/2d/3d and
    Linear layers only (biases, norms, activations and pooling are ignored;
    they are a small fraction for these models).

    Works by forward hooks on a zeros input of per-sample shape
    ``input_shape``.  A batch of 2 is run and the count taken per sample,
    because BatchNorm without running statistics cannot normalise a batch of
    one vector.  The model is run in eval mode under ``no_grad`` and its
    train/eval flags are restored afterwards, so counting never changes it.
    Used by benchmarks to report GFLOP/s and by the thread policy (``engine.threads``).
    """
    batch = 2
    flops: dict[str, int] = {}
    names = {m: name for name, m in model.named_modules()}

    def conv_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        assert isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        macs_per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
        flops[names[module]] = flops.get(names[module], 0) + 2 * macs_per_output * output.numel() // batch

    def linear_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        assert isinstance(module, nn.Linear)
        flops[names[module]] = flops.get(names[module], 0) + 2 * module.in_features * output.numel() // batch

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))

    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.get_default_dtype()
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((batch, *input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return flops
