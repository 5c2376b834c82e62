"""The in-memory dataset a federation trains on: one normalized tensor per split."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch


@dataclass
class Dataset:
    """An in-memory, already-normalized image classification dataset.

    The whole split lives in one tensor because BAFFLE clients run K+1 forward passes per
    minibatch: indexing a resident tensor is far cheaper than a DataLoader pipeline, and it keeps
    sampling fully deterministic (see :class:`baffle.protocol.sampler.BatchSampler`).

    ``x`` and ``y`` may be given as numpy arrays (they become tensors sharing their memory); integer
    labels of any width become int64. Images must already be float32: normalizing is the caller's choice.

    Attributes:
        x: float32 images, N x C x H x W, normalized with the dataset's mean/std.
        y: int64 labels in [0, num_classes).
        num_classes: number of classes of the task (not just those present in this subset).
        name: dataset name, one of :data:`baffle.data.registry.DATASET_NAMES` (or anything for user-built datasets).
        classes: optional human-readable class names.
        groups: optional int64 natural group of each sample (a sentence's domain in a text dataset), used by
            ``data.partition = "domain"``; carried through :meth:`subset`.
    """

    x: torch.Tensor  # a numpy array is accepted and converted
    y: torch.Tensor
    num_classes: int
    name: str
    classes: tuple[str, ...] = field(default=())
    groups: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if isinstance(self.x, np.ndarray):
            self.x = torch.from_numpy(np.ascontiguousarray(self.x))
        if isinstance(self.y, np.ndarray):
            y = self.y.astype(np.int64, copy=False) if np.issubdtype(self.y.dtype, np.integer) else self.y
            self.y = torch.from_numpy(np.ascontiguousarray(y))
        if isinstance(self.groups, np.ndarray):
            self.groups = torch.from_numpy(np.ascontiguousarray(self.groups.astype(np.int64, copy=False)))
        if self.groups is not None and tuple(self.groups.shape) != (self.x.shape[0],):
            raise ValueError(f"Dataset.groups must hold one group per sample, got shape {tuple(self.groups.shape)}")
        if self.x.dim() != 4:
            raise ValueError(f"Dataset.x must be N x C x H x W, got shape {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"Dataset.y must be 1-D with {self.x.shape[0]} labels, got shape {tuple(self.y.shape)}"
            )
        if self.x.dtype != torch.float32:
            raise ValueError(f"Dataset.x must be float32, got {self.x.dtype}")
        if self.y.dtype != torch.int64:
            raise ValueError(f"Dataset.y must be int64, got {self.y.dtype}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W): what a model's input layer needs."""
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: np.ndarray | torch.Tensor | Sequence[int] | slice) -> "Dataset":
        """Return the samples at ``idx`` (integer indices, a boolean mask or a slice).

        Used to carve out a client's local dataset from a :func:`partition` index array. Advanced
        indexing copies, so a client's subset never aliases the global tensor.
        """
        if isinstance(idx, slice):
            index: torch.Tensor | slice = idx
        else:
            if isinstance(idx, torch.Tensor):
                index = idx
            else:
                arr = np.asarray(idx)
                if arr.size == 0:
                    arr = arr.astype(np.int64)
                index = torch.from_numpy(np.ascontiguousarray(arr))
            if index.dtype != torch.bool:
                index = index.long()
            index = index.to(self.x.device)
        return Dataset(
            x=self.x[index],
            y=self.y[index.to(self.y.device) if isinstance(index, torch.Tensor) else index],
            num_classes=self.num_classes,
            name=self.name,
            classes=self.classes,
            groups=None if self.groups is None else self.groups[index.cpu() if isinstance(index, torch.Tensor) else index],
        )

    def label_counts(self) -> np.ndarray:
        """Histogram of labels (length num_classes): handy for checking a partition's skew."""
        return np.bincount(self.y.cpu().numpy(), minlength=self.num_classes)
