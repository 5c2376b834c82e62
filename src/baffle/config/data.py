"""[data]: which dataset, its size and task view, and how it is split across clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from baffle.config.checks import ConfigError, choice, nonneg, positive
from baffle.config.choices import AUGMENTS, DATASET_NAMES, NUM_CLASSES, PARTITION_SCHEMES, TEXT_DATASETS, TRANSFORMS

if TYPE_CHECKING:
    from baffle.config.core import Config


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = ""  # cifar10/cifar100 pickle directory, fashion_mnist idx files, or an ImageFolder directory/.tar(.gz)
    image_size: int = 14  # square resize; 0 = native size (use 0 or 32 for CIFAR). 14x14 MNIST: 4x cheaper forwards
    num_clients: int = 10
    partition: str = "iid"  # iid | dirichlet | shard | domain (text data: one client group per domain)
    alpha: float = 0.5
    shards_per_client: int = 2
    train_subset: int = 0  # 0 = all training samples; else a seeded random subset (for quick runs/tests)
    test_subset: int = 0  # 0 = the whole test set
    eval_train_samples: int = 2000  # training samples the simulator scores for the train_loss metric (0: no train_loss)
    transform: str = "none"  # fixed image transform of the task: none | invert | rotate90 | hflip (baffle.data.tasks)
    augment: str = "auto"  # auto: pad-4 random crop + flip on CIFAR sets (the paper's), nothing elsewhere | none: never
    classes: list[int] = field(default_factory=list)  # keep only these labels, relabelled 0..len-1; empty = all


def augments(d: DataConfig) -> bool:
    """Whether clients augment their minibatches (``baffle.data.augment.augment_cifar``): the one rule the simulator,
    the Flower nodes and the config checks share."""
    return d.augment == "auto" and d.name.startswith("cifar")


def check_classes(classes: Sequence[int], num_classes: int, key: str = "data.classes") -> None:
    """Raise ConfigError (a ValueError) unless ``classes`` are distinct integers in [0, num_classes)."""
    if any(isinstance(c, bool) or not isinstance(c, int) for c in classes):
        raise ConfigError(f"{key} must be a list of integer class labels, got {list(classes)}")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"{key} has repeated labels: {list(classes)}")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"{key}: labels {bad} are outside [0, {num_classes})")
    if len(classes) == 1:
        raise ConfigError(f"{key}: a task needs at least two classes, got {list(classes)}")


def validate(d: DataConfig, cfg: "Config") -> None:
    choice("data.name", d.name, DATASET_NAMES)
    nonneg("data.image_size", d.image_size)
    positive("data.num_clients", d.num_clients)
    choice("data.partition", d.partition, PARTITION_SCHEMES)
    if d.partition == "domain" and d.name not in TEXT_DATASETS:
        raise ConfigError(f"data.partition=domain needs a dataset with domains ({', '.join(TEXT_DATASETS)}), got data.name={d.name}")
    if d.alpha <= 0:
        raise ConfigError(f"data.alpha must be > 0 (Dirichlet concentration), got {d.alpha}")
    positive("data.shards_per_client", d.shards_per_client)
    nonneg("data.train_subset", d.train_subset)
    nonneg("data.test_subset", d.test_subset)
    nonneg("data.eval_train_samples", d.eval_train_samples)
    choice("data.transform", d.transform, TRANSFORMS)
    choice("data.augment", d.augment, AUGMENTS)
    if d.classes and d.name in NUM_CLASSES:  # imagefolder: checked when the data is loaded
        check_classes(d.classes, NUM_CLASSES[d.name])
    if d.name in ("cifar10", "cifar100") and not d.root:
        raise ConfigError(
            f"data.name={d.name} needs data.root: no CIFAR data ships with baffle; download the python "
            "version of the dataset and pass --set data.root=DIR"
        )
    if d.name in ("cifar10_jpeg", "imagefolder") and not d.root:
        raise ConfigError(f"data.name={d.name} needs data.root: a directory or .tar/.tar.gz archive in ImageFolder layout (<split>/<class>/<image>)")
