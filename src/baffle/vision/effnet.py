"""EfficientNet-Lite in plain PyTorch, loading the ImageNet EfficientNet-Lite0 state_dict exactly, with a new head.

Why our own copy instead of the package's ``EfficientNet``: its forward is a few dozen lines; owning them keeps
the parameter names short and stable for ``model.trainable`` globs, keeps BatchNorm frozen whatever
``train()``/``eval()`` says (a forward-only client evaluates K perturbed copies: running statistics updated by
those forwards would be statistics of perturbed models), drops the training-time randomness (dropout before
the classifier, drop-connect) that would make K+1 forwards of one minibatch disagree, and lets the network run
as a chain of stages for prefix caching (:mod:`baffle.prefix`). ``tests/models/test_effnet.py`` checks the logits
equal the package model's (1e-5) on the pretrained weights.

Parameter names (the globs of ``model.trainable`` match these)::

    stem.conv.weight  stem.bn.{weight,bias}
    blocks.{i}.{expand,depthwise,project}.conv.weight  blocks.{i}.{expand,depthwise,project}.bn.{weight,bias}
    top.conv.weight  top.bn.{weight,bias}           (the 1x1 conv to 1280 channels before pooling)
    classifier.{weight,bias}

Convolutions have no bias (each is followed by BatchNorm), so the BN terms are the network's bias terms:
head only ``classifier.*``; BN/bias (BitFit) ``classifier.*, *.bn.*``; the top conv ``classifier.*, top.*``;
the top block ``classifier.*, top.*, blocks.15.*``. BatchNorm's running statistics are buffers, never trained.

Input: a dataset's normalised images ``(x01 - mean) / std`` (x01 in [0, 1], the dataset's per-channel mean/std,
CIFAR-10's by default); the model maps them to EfficientNet-Lite's own normalisation ``(x01 * 255 - 127) / 128``
and resizes them bilinearly to ``resolution`` (``None``: as given) before the stem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from baffle.prefix import PrefixCache, cache_applies

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # baffle.data.registry's cifar10 / cifar10_jpeg normalisation
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class BlockSpec:
    """One stage of MBConv blocks: ``repeats`` blocks, the first with ``stride`` and ``cin`` -> ``cout``."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


@dataclass(frozen=True)
class EffNetConfig:
    stem: int = 32
    stages: tuple[BlockSpec, ...] = (
        # efficientnet_lite_builder.py's lite0 (width = depth = 1.0; stem and head fixed, no squeeze-excite)
        BlockSpec(1, 3, 1, 1, 32, 16), BlockSpec(2, 3, 2, 6, 16, 24), BlockSpec(2, 5, 2, 6, 24, 40),
        BlockSpec(3, 3, 2, 6, 40, 80), BlockSpec(3, 5, 1, 6, 80, 112), BlockSpec(4, 5, 2, 6, 112, 192),
        BlockSpec(1, 3, 1, 6, 192, 320),
    )
    top: int = 1280
    eps: float = 1e-3

    def blocks(self) -> list[BlockSpec]:
        """Every block, repeats expanded: the first of a stage strides, the rest keep the size."""
        out = []
        for s in self.stages:
            out.append(BlockSpec(1, s.kernel, s.stride, s.expand, s.cin, s.cout))
            out += [BlockSpec(1, s.kernel, 1, s.expand, s.cout, s.cout)] * (s.repeats - 1)
        return out


LITE0 = EffNetConfig()
#: a random-weight EfficientNet-Lite for tests and CI: the same block kinds (expand 1 and > 1, k3/k5, stride 2,
#: residuals), a few channels, 4 blocks
TINY = EffNetConfig(stem=8, stages=(BlockSpec(1, 3, 1, 1, 8, 8), BlockSpec(2, 3, 2, 2, 8, 12), BlockSpec(1, 5, 2, 2, 12, 16)), top=32)


def frozen_bn(channels: int, eps: float) -> nn.BatchNorm2d:
    """BatchNorm with frozen (pretrained) statistics: a plain ``nn.BatchNorm2d`` (so the batched engine runs it)
    in eval mode, which the modules holding one keep whatever ``train()`` says (:class:`_PinnedBN`), training only
    the affine ``weight``/``bias``. The statistics are non-persistent buffers: every build of the model reads them
    from the pretrained checkpoint, so run checkpoints, weights and uploads carry only what can train."""
    bn = nn.BatchNorm2d(channels, eps=eps)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        t = getattr(bn, name)
        delattr(bn, name)
        bn.register_buffer(name, t, persistent=False)
    return bn.eval()


class _PinnedBN(nn.Module):
    """A module whose ``bn`` stays in eval mode (frozen statistics): a forward-only client evaluates K perturbed
    models, and batch statistics or running-statistic updates would make those forwards disagree."""

    bn: nn.BatchNorm2d

    def train(self, mode: bool = True) -> "_PinnedBN":
        super().train(mode)
        self.bn.eval()
        return self


class ConvBN(_PinnedBN):
    """conv (TensorFlow 'same' padding, no bias) -> frozen BN -> optional ReLU6 (EfficientNet-Lite's activation).

    'same' padding for stride 2 puts the extra pixel on the right/bottom, as TensorFlow (and the package's
    ``Conv2dStaticSamePadding`` at 224 px) does; it is computed from the input size, so any size works."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True, eps: float = 1e-3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups, bias=False)
        self.bn = frozen_bn(cout, eps)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv.stride[0]
        if s > 1:
            k = self.conv.kernel_size[0]
            ph = max((math.ceil(x.shape[-2] / s) - 1) * s + k - x.shape[-2], 0)
            pw = max((math.ceil(x.shape[-1] / s) - 1) * s + k - x.shape[-1], 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        y = self.bn(self.conv(x))
        return F.relu6(y) if self.act else y


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand -> ReLU6] -> kxk depthwise -> ReLU6 -> 1x1 project (linear), + x if shapes match."""

    def __init__(self, spec: BlockSpec, eps: float):
        super().__init__()
        mid = spec.cin * spec.expand
        self.expand = ConvBN(spec.cin, mid, eps=eps) if spec.expand != 1 else None
        self.depthwise = ConvBN(mid, mid, spec.kernel, spec.stride, groups=mid, eps=eps)
        self.project = ConvBN(mid, spec.cout, act=False, eps=eps)
        self.residual = spec.stride == 1 and spec.cin == spec.cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.depthwise(h))
        return h + x if self.residual else h


class Top(_PinnedBN):
    """The 1x1 conv to ``top`` channels, BN, ReLU6, global average pooling: (B, top) features."""

    def __init__(self, cin: int, cout: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = frozen_bn(cout, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_top(self.bn(self.conv(x)))


class TopBN(_PinnedBN):
    """The top BN alone (a :class:`Tail` cut after the top conv), under the name ``top.bn``."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_top(self.bn(x))


def pool_top(h: torch.Tensor) -> torch.Tensor:
    """ReLU6 and global average pooling of the top BN's output: the (B, top) features."""
    return F.adaptive_avg_pool2d(F.relu6(h), 1).flatten(1)


class InputTransform(nn.Module):
    """Dataset normalisation -> EfficientNet-Lite's ``(x01 * 255 - 127) / 128``, then a bilinear resize.

    The per-channel affine map is constant (non-persistent buffers): nothing here trains."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], resolution: int | None):
        super().__init__()
        m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
        self.register_buffer("scale", s * 255.0 / 128.0, persistent=False)
        self.register_buffer("shift", (m * 255.0 - 127.0) / 128.0, persistent=False)
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.scale + self.shift
        r = self.resolution
        if r is not None and tuple(x.shape[-2:]) != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False)
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite features -> linear classifier. Without autograd (forward-only clients, evaluation) the
    stages run through a :class:`baffle.prefix.PrefixCache`; ``prefix_cache = None`` turns it off.

    Stages (the prefix cache's unit): 0 = input transform + stem, 1..N = the MBConv blocks, N+1 = the top conv +
    pooling; the classifier runs on every forward. :meth:`tail` cuts at a block, the top conv, the top BN or the
    classifier."""

    def __init__(self, config: EffNetConfig, num_classes: int, *, resolution: int | None = None,
                 mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD):
        super().__init__()
        self.config = config
        self.input = InputTransform(mean, std, resolution)
        self.stem = ConvBN(3, config.stem, 3, 2, eps=config.eps)
        self.blocks = nn.ModuleList(MBConv(b, config.eps) for b in config.blocks())
        self.top = Top(config.stages[-1].cout, config.top, config.eps)
        self.classifier = nn.Linear(config.top, num_classes)
        self.prefix_cache: PrefixCache | None = PrefixCache()

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.blocks, self.top]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, top) pooled features of a dataset batch, every stage run."""
        h = self.input(x)
        for stage in self.stages():
            h = stage(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of the normalised images ``x`` [B, 3, H, W]."""
        if self.prefix_cache is not None and cache_applies(x):
            h, _ = self.prefix_cache.run(self.stages(), x, self.input, lambda i, stage, h, ctx: stage(ctx if i == 0 else h))
        else:
            h = self.features(x)
        return self.classifier(h)

    def cut_points(self) -> list[str]:
        """Where :meth:`tail` may begin: ``blocks.{i}``, ``top`` (the top conv), ``top.bn`` (after the top conv),
        ``classifier`` (after pooling), bottom to top."""
        return [f"blocks.{i}" for i in range(len(self.blocks))] + ["top", "top.bn", "classifier"]

    @torch.no_grad()
    def prefix_states(self, x: torch.Tensor, begins: Sequence[str]) -> dict[str, torch.Tensor]:
        """For each cut point in ``begins``, the state :meth:`tail` takes there: what enters it when ``x`` runs
        through the frozen network below (``classifier``: the pooled features as [B, top, 1, 1]). One pass."""
        points = self.cut_points()
        bad = [b for b in begins if b not in points]
        if bad:
            raise ValueError(f"tail begin {bad[0]!r} is not one of {', '.join(points)}")
        out: dict[str, torch.Tensor] = {}
        h = self.stem(self.input(x))
        for i, block in enumerate(self.blocks):
            if f"blocks.{i}" in begins:
                out[f"blocks.{i}"] = h
            h = block(h)
        if "top" in begins:
            out["top"] = h
        h = self.top.conv(h)
        if "top.bn" in begins:
            out["top.bn"] = h
        if "classifier" in begins:
            out["classifier"] = pool_top(self.top.bn(h))[:, :, None, None]
        return out

    def tail(self, begin: str) -> "Tail":
        """The network from ``begin`` (one of :meth:`cut_points`) on, sharing this model's modules and names."""
        return Tail(self, begin)


class Tail(nn.Module):
    """The top of an :class:`EfficientNetLite` from a cut point on, plus its classifier, on the states the frozen
    bottom produces (:meth:`EfficientNetLite.prefix_states`): the bottom computed once for a whole dataset.
    Parameter names are the full model's (``blocks.12.expand.conv.weight``, ``top.bn.weight``, ``classifier.*``),
    so the same ``model.trainable`` globs select the same tensors; nothing below the cut is a parameter here."""

    def __init__(self, model: EfficientNetLite, begin: str):
        super().__init__()
        points = model.cut_points()
        if begin not in points:
            raise ValueError(f"tail begin {begin!r} is not one of {', '.join(points)}")
        self.begin = begin
        n = points.index(begin)
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(n, len(model.blocks))})
        self.top: nn.Module | None = None
        if begin == "top.bn":
            self.top = TopBN(model.top.bn)
        elif begin != "classifier":
            self.top = model.top
        self.classifier = model.classifier

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            h = block(h)
        h = self.top(h) if self.top is not None else h.flatten(1)
        return self.classifier(h)


_PACKAGE_CONVS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                  "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
_PACKAGE_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "top.conv", "_bn1": "top.bn", "_fc": "classifier"}


def package_to_ours(name: str) -> str:
    """Our name of an efficientnet-lite-pytorch state_dict entry."""
    parts = name.split(".")
    if parts[0] == "_blocks":
        return f"blocks.{parts[1]}.{_PACKAGE_CONVS[parts[2]]}.{parts[3]}"
    return f"{_PACKAGE_TOP[parts[0]]}.{parts[1]}"


def load_package_weights(model: EfficientNetLite, state: dict[str, torch.Tensor], *, load_classifier: bool = False) -> None:
    """Copy the package's state_dict into ``model`` (parameters and BN statistics), every tensor exactly; the
    ImageNet classifier only with ``load_classifier`` (tests), else the model keeps its new head."""
    mapped = {package_to_ours(name): t for name, t in state.items()}
    if not load_classifier:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    own = {k: v for k, v in own.items() if not k.startswith("input.") and (load_classifier or not k.startswith("classifier."))}
    missing, unexpected = sorted(set(own) - set(mapped)), sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the EfficientNet-Lite config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, t in own.items():
            if tuple(mapped[name].shape) != tuple(t.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(mapped[name].shape)}, model {tuple(t.shape)}")
            t.copy_(mapped[name])


def init_head(model: EfficientNetLite, seed: int = 0) -> None:
    """The new classifier from a fixed seed (torch's nn.Linear rule, U(+-1/sqrt(fan_in))), independent of the
    global RNG, so every build of the pretrained model starts from the same head."""
    if model.classifier.weight.is_meta:
        return
    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(model.classifier.in_features)
    with torch.no_grad():
        for p in (model.classifier.weight, model.classifier.bias):
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
