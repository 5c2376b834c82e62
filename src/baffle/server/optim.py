"""The server's optimizer, learning-rate schedule and EMA of the weights: what turns g into a model step."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from baffle.config import Config


class EMA:
    """Exponential moving average of the model's state, used for evaluation (the paper's guideline).

    The shadow lives on the model's device (``run.device``), like the optimizer's state. ``warmup``
    (``optim.ema_warmup``) is torch_ema's ``use_num_updates``, which the paper's code leaves on: update n
    (1-based) uses ``min(decay, (1 + n) / (10 + n))``, so early updates follow the weights closely
    (0.18 at n=1, 0.70 at n=20) instead of leaving the average near the initial weights."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False, names: Iterable[str] | None = None):
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        # the entries that can change (``ServerStrategy.state_names``; None: all). The others are the frozen
        # model's and stay exactly its values: averaging a value with itself rounds in float32 (on MiniLM 4.9M of
        # the 22.7M frozen entries moved by an ulp per update), which changed the evaluated encoder every round,
        # so no cache of its outputs could hold, and cost a pass over the whole model per update
        self.names = tuple(self.shadow) if names is None else tuple(names)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        state = model.state_dict()
        for k in self.names:
            v = state[k]
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(decay).add_(v, alpha=1 - decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        """The shadow's ``names`` entries: the rest is the frozen model, which whoever loads this rebuilt."""
        state = {"decay": self.decay, "shadow": {k: self.shadow[k] for k in self.names}}
        if self.warmup:  # only then does the count matter; checkpoints without warm-up keep their old layout
            state["num_updates"] = self.num_updates
        return state

    def load_state_dict(self, state: dict, model: torch.nn.Module | None = None) -> None:
        """Restore a saved shadow onto the model's device (a checkpoint holds CPU tensors). Entries outside
        ``names`` are ``model``'s (the frozen part the caller has loaded or rebuilt; without ``model``, the one
        this shadow was built from), never the checkpoint's: one written before they were kept exact holds them
        an ulp off. A saved shadow without one of ``names`` is refused (ValueError, naming it)."""
        saved = state["shadow"]
        missing = [k for k in self.names if k not in saved]
        if missing:
            raise ValueError(f"checkpoint's EMA shadow lacks {missing[0]!r}")
        self.decay = state["decay"]
        self.num_updates = int(state.get("num_updates", 0))
        device = next(iter(self.shadow.values())).device if self.shadow else torch.device("cpu")
        own = model.state_dict() if model is not None else self.shadow
        changing = set(self.names)
        self.shadow = {k: (saved[k] if k in changing else own[k]).to(device, copy=True) for k in self.shadow}


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
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
