"""Low-rank adapters (LoRA) for forward-only fine-tuning: few perturbed parameters, frozen base weights.

The zeroth-order estimate's error grows like sqrt(n / K) with the number n of perturbed parameters, so
fine-tuning a pretrained model forward-only pays off most when n is small. ``model.adapter = "lora"`` adds to
every convolution and linear layer W (shape out x fan_in after flattening) a trainable low-rank term:

    W_eff = W + B @ A,   A: r x fan_in (small random),  B: out x r (zeros, so W_eff = W at the start)

implemented with ``torch.nn.utils.parametrize``, so the layers, the estimator and the checkpoints need no
special case: the adapter's tensors are ordinary parameters named ``...parametrizations.weight.0.lora_A`` /
``lora_B``, selected with ``model.trainable = ["*lora_*"]``, and the base weight
(``...parametrizations.weight.original``) is simply not selected, so it stays bit-identical.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from baffle.config.choices import ADAPTERS, LORA_PATTERN  # the one list of valid choices per key


class LoRA(nn.Module):
    """The parametrization W -> W + B @ A (reshaped to W's shape)."""

    def __init__(self, weight: torch.Tensor, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        out, fan_in = weight.shape[0], weight[0].numel()
        r = min(rank, out, fan_in)
        a = torch.randn(r, fan_in, generator=generator, dtype=weight.dtype) / math.sqrt(fan_in)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(out, r, dtype=weight.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.lora_B @ self.lora_A).view_as(weight)


def add_adapters(model: nn.Module, kind: str, rank: int = 4, seed: int = 0) -> nn.Module:
    """Attach ``kind`` adapters to every Conv/Linear weight of ``model`` in place (after loading its
    pretrained weights) and return it. The adapter's random A depends only on ``seed`` and the layer order,
    so the server's, the clients' and the evaluator's copies of the model are identical."""
    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter {kind!r}; valid: {', '.join(ADAPTERS)}")
    if kind == "none":
        return model
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    g = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))]
    if not layers:
        raise ValueError("model has no Conv or Linear layer to adapt")
    for m in layers:
        parametrize.register_parametrization(m, "weight", LoRA(m.weight.detach(), rank, g))
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain model's state_dict with every adapter folded into its weight (W + B @ A): what one ships.

    Built key by key rather than by removing the parametrizations from a deep copy: a copy shares the
    parametrized class with the original, and removing it there would break the original too."""
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if ".parametrizations." not in name:
                out[name] = tensor.clone()
            elif name.endswith(".original"):
                prefix, attr = name.split(".parametrizations.")[0], name.split(".parametrizations.")[1].split(".")[0]
                module = model.get_submodule(prefix)
                out[f"{prefix}.{attr}"] = getattr(module, attr).detach().clone()
    return out
