"""The server's optimizer, learning-rate schedule and EMA of the weights: what turns g into a model step."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from baffle.config import Config


class EMA:
    """Exponential moving average of the model's state, used for evaluation (the paper's guideline).

    The shadow lives on the model's device (``run.device``), like the optimizer's state."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v, alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved shadow onto the model's device (a checkpoint holds CPU tensors)."""
        self.decay = state["decay"]
        device = next(iter(self.shadow.values())).device if self.shadow else torch.device("cpu")
        self.shadow = {k: v.to(device, copy=True) for k, v in state["shadow"].items()}


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(cfg: Config, round_idx: int) -> float:
    """Multiplier of optim.lr at a (0-based) round: MultiStep milestones, optionally times a cosine."""
    o = cfg.optim
    f = o.gamma ** sum(1 for m in o.milestones if round_idx >= m)
    if o.cosine:
        f *= 0.5 * (1 + math.cos(math.pi * round_idx / cfg.run.rounds))
    if o.warmup and round_idx < o.warmup:  # ZO estimates are noisiest relative to the step early on
        f *= (round_idx + 1) / o.warmup
    return f
