"""Data augmentation for CIFAR-style images, seeded per client."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_cifar(
    x: torch.Tensor, generator: torch.Generator, *, padding: int = 4, fill: float = 0.0
) -> torch.Tensor:
    """Random crop with ``padding`` (pad-4, as in the paper's CIFAR recipe) and random horizontal
    flip, for a whole batch at once; the same generator state gives the same output.

    Works on the normalized tensors of :class:`Dataset`, so the default ``fill=0`` pads with the
    dataset mean colour (torchvision pads black before normalizing; pass
    ``fill=-mean/std`` for that). All randomness comes from ``generator`` (a CPU generator), never
    from the global RNG, so federated runs stay reproducible per client.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_cifar expects N x C x H x W, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if n == 0:
        return x.clone()
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=generator.device)
    flips = torch.rand(n, generator=generator, device=generator.device) < 0.5
    offsets, flips = offsets.to(x.device), flips.to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding), value=fill)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # n x h
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols) + offsets[:, 1:]  # n x w
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
