"""[model]: architecture, starting weights, which parameters train, adapters and pruning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from baffle.config.checks import ConfigError, choice, positive
from baffle.config.choices import ACTIVATIONS, ADAPTERS, LORA_PATTERN, MODEL_ALIASES, MODEL_NAMES, NORMS, TEXT_DATASETS, TEXT_MODEL_NAMES, VISION_MODEL_NAMES

if TYPE_CHECKING:
    from baffle.config.core import Config


@dataclass
class ModelConfig:
    name: str = "lenet_small"  # lenet (the paper's, global pooling, 26.7k params) | lenet_small | wrn10_2 | cnn_cifar_small | rf_cnn | rf_white | mlp
    activation: str = "hardswish"
    norm: str = "group"
    init: str = ""  # checkpoint or state_dict file to start from (fine-tuning)
    trainable: list[str] = field(default_factory=list)  # glob patterns; empty = all parameters
    adapter: str = "none"  # none | lora (low-rank adapters on every conv/linear weight; baffle.adapters)
    lora_rank: int = 4
    prune: float = 0.0  # fixed magnitude-pruning mask (fraction of each weight tensor), kept by the server


def validate(m: ModelConfig, cfg: "Config") -> None:
    choice("model.name", m.name, MODEL_NAMES + TEXT_MODEL_NAMES + VISION_MODEL_NAMES + tuple(MODEL_ALIASES))
    if (m.name in TEXT_MODEL_NAMES) != (cfg.data.name in TEXT_DATASETS):  # token ids vs images
        raise ConfigError(f"model.name={m.name} does not fit data.name={cfg.data.name}: the text models "
                          f"({', '.join(TEXT_MODEL_NAMES)}) read the text datasets ({', '.join(TEXT_DATASETS)}) and only those")
    choice("model.activation", m.activation, ACTIVATIONS)
    choice("model.norm", m.norm, NORMS)
    if m.name == "rf_white" and (m.activation, m.norm) != ("hardswish", "group"):  # both left at their defaults
        raise ConfigError(f"model.activation={m.activation!r} / model.norm={m.norm!r} do not apply to rf_white: its "
                          "thresholded ReLU and per-sample norm are part of the model (baffle.models_rf)")
    if m.init and ("\0" in m.init or not Path(m.init).is_file()):
        raise ConfigError(f"model.init={m.init!r}: no such file")
    choice("model.adapter", m.adapter, ADAPTERS)
    positive("model.lora_rank", m.lora_rank)
    if m.adapter == "lora" and not any("lora_" in pat for pat in m.trainable):
        raise ConfigError(
            f"model.adapter='lora' adds adapter parameters that must be trained: include {LORA_PATTERN!r} in "
            f"model.trainable (now {m.trainable}), e.g. model.trainable = [{LORA_PATTERN!r}, 'classifier.*']"
        )
    if not 0 <= m.prune < 1:
        raise ConfigError(f"model.prune must be a fraction in [0, 1), got {m.prune}")
    if m.prune > 0 and cfg.run.method != "baffle":
        raise ConfigError(f"model.prune is implemented for scalar-upload rounds: it needs run.method='baffle', got {cfg.run.method!r}")
