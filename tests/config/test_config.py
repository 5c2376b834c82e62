"""Bad configuration fails early with a message that names the key."""

import pytest

from baffle.config import Config, ConfigError


def _bad(*overrides):
    cfg = Config()
    cfg.apply_overrides(list(overrides))
    cfg.validate()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("estimator.K=-5", "estimator.K"),
        ("estimator.K=0", "estimator.K"),
        ("estimator.sigma=0", "estimator.sigma"),
        ("estimator.sigma=-1e-3", "estimator.sigma"),
        ("model.name=resnet9000", "model.name"),
        ("federation.clients_per_round=0", "clients_per_round"),
        ("federation.clients_per_round=1.5", "clients_per_round"),
        ("federation.clients_per_round=-0.5", "clients_per_round"),
        ("federation.clients_per_round=11", "exceeds data.num_clients"),
        ("estimator.scheme=sideways", "estimator.scheme"),
        ("data.name=imagenet", "data.name"),
        ("data.partition=zipf", "data.partition"),
        ("data.alpha=0", "data.alpha"),
        ("optim.name=lion", "optim.name"),
        ("optim.ema_decay=1.0", "optim.ema_decay"),
        ("federation.local_optimizer=rmsprop", "federation.local_optimizer"),
        ("federation.local_optimizer=sgd", "baffle_local"),
        ("run.method=sgd", "run.method"),
        ("data.name=cifar10", "data.root"),
    ],
)
def test_bad_values_fail_with_the_key_named(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        _bad(override)


@pytest.mark.parametrize(
    "override, fragment",
    [("estimator.k=5", "unknown config key"), ("nosuch.key=1", "unknown config section"), ("estimator.K=abc", "must be an integer"), ("K=5", "section.key"), ("estimatorK", "section.key=value")],
)
def test_unknown_or_malformed_overrides(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Config().apply_overrides([override])


def test_defaults_are_valid_and_toml_round_trips(tmp_path):
    cfg = Config().validate()
    cfg.apply_overrides(["estimator.K=7", "model.trainable=classifier.*,features.0.*", "optim.milestones=[10, 20]", "optim.cosine=true"])
    assert cfg.model.trainable == ["classifier.*", "features.0.*"]
    assert cfg.optim.milestones == [10, 20] and cfg.optim.cosine is True
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    again = Config.load(path)
    assert again.to_dict() == cfg.to_dict()


def test_toml_file_errors(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[estimator\nK = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(p)
    p.write_text("[estimator]\nK = 'many'\n")
    with pytest.raises(ConfigError, match="estimator.K must be an integer"):
        Config.load(p)
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path / "missing.toml")


def test_clients_per_round_accepts_fraction_and_count():
    for v in ("0.5", "1", "3"):
        cfg = Config()
        cfg.set("federation.clients_per_round", v)
        cfg.validate()


def _first_module(*names):
    import importlib

    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise AssertionError(f"none of {names} imports")


@pytest.mark.parametrize("modules, attr, choice", [
    (("baffle.models",), "MODEL_NAMES", "MODEL_NAMES"),
    (("baffle.models",), "MODEL_ALIASES", "MODEL_ALIASES"),
    (("baffle.models",), "ACTIVATIONS", "ACTIVATIONS"),
    (("baffle.models",), "NORMS", "NORMS"),
    (("baffle.adapters",), "ADAPTERS", "ADAPTERS"),
    (("baffle.adapters",), "LORA_PATTERN", "LORA_PATTERN"),
    (("baffle.shaping",), "BASELINES", "BASELINES"),
    (("baffle.shaping",), "SHAPINGS", "SHAPINGS"),
    (("baffle.data.tasks",), "TRANSFORMS", "TRANSFORMS"),
    (("baffle.privacy",), "MODES", "PRIVACY_MODES"),
    (("baffle.sim.attacks", "baffle.attacks"), "ATTACKS", "ATTACKS"),
    (("baffle.protocol.schemes", "baffle.estimator"), "SCHEMES", "SCHEMES"),
    (("baffle.data.registry",), "DATASET_NAMES", "DATASET_NAMES"),
    (("baffle.data.partition",), "PARTITION_SCHEMES", "PARTITION_SCHEMES"),
    (("baffle.onnx_client",), "PRECISIONS", "ONNX_PRECISIONS"),
    (("baffle.protocol.noise",), "KINDS", "NOISE_KINDS"),
])
def test_feature_modules_use_the_config_choices(modules, attr, choice):
    """One list of valid choices per key: a feature module's tuple is baffle.config.choices' (not a copy)."""
    from baffle.config import choices

    assert getattr(_first_module(*modules), attr) == getattr(choices, choice)


def test_dataset_class_counts_match_the_registry():
    from baffle.config.choices import NUM_CLASSES
    from baffle.data.registry import DATASET_INFO

    assert {k: v.num_classes for k, v in DATASET_INFO.items()} == NUM_CLASSES


def test_config_imports_no_feature_module_and_no_torch():
    import subprocess
    import sys

    code = "import sys, baffle.config; c = baffle.config.Config().validate(); " \
           "print(sorted(m for m in sys.modules if m == 'torch' or (m.startswith('baffle') and not m.startswith('baffle.config'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['baffle']", out


def test_every_key_is_listed_once():
    keys = list(Config.keys())
    assert len(keys) == len(set(keys)) and "estimator.K" in keys and "privacy.delta" in keys
    cfg = Config()
    assert all(cfg.get(k) == getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in keys)


def test_data_augment_decides_cifar_augmentation_and_onnx_clients_need_it_off():
    """data.augment=auto augments CIFAR sets only; 'none' turns it off, which is what ONNX clients (no torch
    augmentation) need on CIFAR; the refusal names the key to set."""
    from baffle.config.data import augments

    cifar = ["data.name=cifar10_jpeg", "data.root=x.tar.gz", "model.name=cnn_cifar_small", "data.image_size=0"]
    cfg = Config()
    cfg.apply_overrides(cifar)
    assert augments(cfg.validate().data)
    cfg.apply_overrides(["data.augment=none"])
    assert not augments(cfg.validate().data)
    assert not augments(Config().validate().data)  # mnist: nothing to augment
    cfg.apply_overrides(["federation.onnx_clients=1.0"])
    cfg.validate()  # ONNX clients on CIFAR without augmentation: accepted
    cfg.apply_overrides(["data.augment=auto"])
    with pytest.raises(ConfigError, match="data.augment='none'"):
        cfg.validate()
    bad = Config()
    bad.apply_overrides(["data.augment=random"])
    with pytest.raises(ConfigError, match="data.augment='random' is not valid"):
        bad.validate()
