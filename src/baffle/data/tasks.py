"""Shifted tasks for fine-tuning: a class subset with relabelling, and fixed input transforms.

Forward-only fine-tuning (the paper's second use case) needs a source task to pretrain on and a related but
different target task. Both are views of the datasets we have: ``data.classes = [5, 6, 7, 8, 9]`` keeps those
digits and relabels them 0..4 (so a 5-way classifier pretrained on digits 0-4 fits the target exactly), and
``data.transform = "invert" | "rotate90" | "hflip"`` applies one fixed transform to every image (train and
test alike), e.g. white-on-black digits become black-on-white.
"""

from __future__ import annotations

from typing import Sequence

import torch

from baffle.config.choices import TRANSFORMS  # the one list of valid choices per key
from baffle.config.data import check_classes  # config validation runs the same check
from baffle.data.dataset import Dataset
from baffle.data.registry import DATASET_INFO


def select_classes(ds: Dataset, classes: Sequence[int]) -> Dataset:
    """Only the samples of ``classes``, relabelled to their position in the list (0..len-1)."""
    check_classes(classes, ds.num_classes)
    lut = torch.full((ds.num_classes,), -1, dtype=torch.int64)
    lut[torch.tensor(list(classes))] = torch.arange(len(classes))
    new = lut[ds.y]
    keep = new >= 0
    names = tuple(ds.classes[c] for c in classes) if ds.classes else ()
    return Dataset(x=ds.x[keep].contiguous(), y=new[keep].contiguous(), num_classes=len(classes), name=ds.name, classes=names)


def transform_images(ds: Dataset, transform: str) -> Dataset:
    """One fixed transform of every image. Inversion happens in pixel space (p -> 1 - p), which on the
    normalized tensor x = (p - mean)/std is x -> (1 - 2 mean)/std - x, channel by channel."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown data.transform {transform!r}; valid: {', '.join(TRANSFORMS)}")
    x = ds.x
    if transform == "invert":
        info = DATASET_INFO.get(ds.name)
        if info is None:
            raise ValueError(f"data.transform='invert' needs the normalization statistics of {ds.name!r}")
        mean = torch.tensor(info.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(info.std, dtype=x.dtype).view(1, -1, 1, 1)
        x = (1 - 2 * mean) / std - x
    elif transform == "rotate90":
        x = torch.rot90(x, 1, dims=(2, 3))
    elif transform == "hflip":
        x = torch.flip(x, dims=(3,))
    return Dataset(x=x.contiguous(), y=ds.y, num_classes=ds.num_classes, name=ds.name, classes=ds.classes)


def task_view(ds: Dataset, transform: str = "none", classes: Sequence[int] = ()) -> Dataset:
    """The dataset as the configured task sees it (identity for the defaults)."""
    if classes:
        ds = select_classes(ds, classes)
    if transform != "none":
        ds = transform_images(ds, transform)
    return ds
