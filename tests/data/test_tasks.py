"""Shifted tasks: class subsets relabel, transforms are exact, bad keys are refused."""

import pytest
import torch

from baffle.config import Config, ConfigError
from baffle.data.registry import load_dataset
from baffle.data.tasks import select_classes, task_view, transform_images


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic", split="test", num_samples=200)


def test_select_classes_relabels_in_list_order(ds):
    sub = select_classes(ds, [7, 2])
    assert sub.num_classes == 2
    assert len(sub) == int(((ds.y == 7) | (ds.y == 2)).sum())
    assert torch.equal(sub.x[sub.y == 0], ds.x[ds.y == 7]) and torch.equal(sub.x[sub.y == 1], ds.x[ds.y == 2])


def test_transforms_are_exact(ds):
    inv = transform_images(ds, "invert")
    assert torch.allclose(transform_images(inv, "invert").x, ds.x, atol=1e-5)
    # pixel space: p -> 1 - p
    mean, std = 0.097, 0.156
    assert torch.allclose(inv.x * std + mean, 1 - (ds.x * std + mean), atol=1e-5)
    rot = task_view(ds, "rotate90")
    assert torch.equal(torch.rot90(rot.x, -1, dims=(2, 3)), ds.x) and torch.equal(rot.y, ds.y)


@pytest.mark.parametrize(
    "override, message",
    [("data.transform=blur", "data.transform"), ("data.classes=[1,1]", "repeated"), ("data.classes=[3,10]", "outside"),
     ("data.classes=[4]", "at least two")],
)
def test_bad_task_keys_are_refused(override, message):
    cfg = Config()
    cfg.apply_overrides([override])
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
