"""[optim]: the server's optimizer on the reconstructed gradient, its schedule, clipping and the EMA."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from baffle.config.checks import ConfigError, choice, nonneg, positive
from baffle.config.choices import OPTIMIZERS

if TYPE_CHECKING:
    from baffle.config.core import Config


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 0.005  # 0.01 until experiments/default_optim.toml measured 0.005 + beta2 0.999 better over 3 seeds
    momentum: float = 0.9  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam (beta2 was 0.99, the paper's code)
    weight_decay: float = 5e-4
    clip: float = 0.3  # infinity-norm clip of the gradient estimate; 0 disables
    milestones: list[int] = field(default_factory=list)  # rounds at which lr *= gamma
    gamma: float = 0.2
    cosine: bool = True  # cosine decay of lr to 0 over the run (applied on top of milestones)
    warmup: int = 20  # rounds of linear lr warmup from lr/warmup to lr; 0 disables
    ema_decay: float = 0.98  # EMA of weights used for evaluation; 0 disables
    ema_every: int = 1  # rounds between EMA updates
    ema_warmup: bool = False  # torch_ema's warm-up (the paper's code): update n uses min(ema_decay, (1+n)/(10+n))


def validate(o: OptimConfig, cfg: "Config") -> None:
    choice("optim.name", o.name, OPTIMIZERS)
    if not o.lr > 0:
        raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum must be in [0, 1), got {o.momentum}")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    if o.clip < 0:
        raise ConfigError(f"optim.clip must be >= 0 (0 disables), got {o.clip}")
    if any(not isinstance(x, int) or x < 1 for x in o.milestones):
        raise ConfigError(f"optim.milestones must be positive round numbers, got {o.milestones}")
    if o.gamma <= 0:
        raise ConfigError(f"optim.gamma must be > 0 (lr multiplier at each milestone), got {o.gamma}")
    nonneg("optim.warmup", o.warmup)
    if not 0 <= o.ema_decay < 1:
        raise ConfigError(f"optim.ema_decay must be in [0, 1), got {o.ema_decay}")
    positive("optim.ema_every", o.ema_every)
