"""Flower Datasets (``flwr-datasets``) partitioners on baffle's local datasets.

Flower users split data with flwr-datasets' partitioners (``IidPartitioner``, ``DirichletPartitioner``,
``PathologicalPartitioner``, ``NaturalIdPartitioner``, ...), normally through ``FederatedDataset``, which
downloads from the Hugging Face Hub. baffle's datasets are local files and nothing downloads at run time,
so this module hands a partitioner a label-only ``datasets.Dataset`` built from baffle's training labels
(plus each sample's domain, for text data, and its index), prepared as ``FederatedDataset(shuffle=True,
seed=...)`` prepares a split (``Dataset.shuffle(seed)``, then the partitioner), and reads back which
samples each partition holds: sorted index arrays, the same form as ``baffle.data.partition.partition``.

Two ways in: the Flower app's run-config key ``flwr-partitioner`` (``iid``, ``dirichlet``, ``pathological``,
``natural-id``; the nodes then load their partition through here, parameters from ``data-alpha``,
``data-shards-per-client`` and ``run-seed``); or ``flwr_partition(labels, partitioner=AnyFlwrPartitioner(...))``
from Python, for any partitioner flwr-datasets has.

Which partitions equal baffle's own (tests/flower/test_flower_datasets.py checks each line):

* ``iid`` = baffle ``iid``, index for index: ``Dataset.shuffle(seed)`` is ``default_rng(seed).permutation(n)``,
  baffle's first draw, and ``IidPartitioner`` cuts contiguous shards of ``np.array_split``'s sizes.
* ``natural-id`` = baffle ``domain`` with one client per domain (both number the sorted domain ids); on
  data without domains it partitions by label (one partition per class; baffle has no such scheme).
* ``dirichlet`` != baffle ``dirichlet``: the same model (per class, Dirichlet(alpha) proportions over the
  partitions, cut at ``int(cumsum(p) * n_class)``) with other draws (baffle permutes each class before its
  draw; flwr-datasets draws in the shuffled data's order, needs >= 10 samples per partition and stops
  after 10 redraws, baffle >= 1 and 1000).
* ``pathological`` != baffle ``shard``: flwr-datasets gives every partition exactly
  ``num_classes_per_partition`` classes (``first-deterministic``: partition i gets class i mod C first),
  each class split evenly among the partitions holding it; baffle cuts the label-sorted data into
  ``clients x shards_per_client`` equal shards dealt at random, so a client holds about that many classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLWR_DATASETS_PACKAGE = "flwr-datasets==0.6.1"
PARTITIONERS = ("iid", "dirichlet", "pathological", "natural-id")  # the app key flwr-partitioner's values


class FlowerDatasetsMissing(ImportError):
    """flwr-datasets is an optional dependency (the ``flower`` extra): baffle works without it."""


def _require() -> Any:
    try:
        import flwr_datasets.partitioner as partitioners
    except ImportError:
        raise FlowerDatasetsMissing(f"flwr-datasets is not installed: .venv/bin/pip install {FLWR_DATASETS_PACKAGE}") from None
    return partitioners


def make_partitioner(kind: str, num_partitions: int, *, alpha: float = 0.5, classes_per_partition: int = 2,
                     seed: int = 0, partition_by: str = "label") -> Any:
    """One flwr-datasets partitioner by its short name, with flwr-datasets' own defaults except the seed."""
    p = _require()
    if kind == "iid":
        return p.IidPartitioner(num_partitions)
    if kind == "dirichlet":
        return p.DirichletPartitioner(num_partitions, partition_by, alpha, seed=seed)
    if kind == "pathological":
        return p.PathologicalPartitioner(num_partitions, partition_by, classes_per_partition,
                                         class_assignment_mode="first-deterministic", seed=seed)
    if kind == "natural-id":
        return p.NaturalIdPartitioner(partition_by)
    raise ValueError(f"unknown flwr-datasets partitioner {kind!r}; valid: {', '.join(PARTITIONERS)}")


def flwr_partition(labels: np.ndarray, num_partitions: int | None = None, kind: str = "iid", *, alpha: float = 0.5,
                   classes_per_partition: int = 2, seed: int = 0, groups: np.ndarray | None = None,
                   partitioner: Any = None, shuffle: bool = True) -> list[np.ndarray]:
    """The sample indices of every partition (sorted int64 arrays, disjoint) as a flwr-datasets partitioner
    splits ``labels``: ``kind`` (with ``num_partitions`` and the parameters) or a ready ``partitioner``.

    The partitioner sees a ``datasets.Dataset`` with columns ``label``, ``group`` (when ``groups`` is given:
    a text sample's domain) and ``index``, shuffled with ``seed`` first when ``shuffle`` (what
    ``FederatedDataset`` does by default). ``natural-id`` partitions by ``group`` when there are groups,
    else by ``label``; a ready partitioner names its own column.
    """
    _require()
    import datasets

    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    columns: dict[str, np.ndarray] = {"label": y.astype(np.int64), "index": np.arange(len(y), dtype=np.int64)}
    if groups is not None:
        columns["group"] = np.asarray(groups, dtype=np.int64)
    ds = datasets.Dataset.from_dict(columns)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if partitioner is None:
        by = "group" if kind == "natural-id" and groups is not None else "label"
        if kind == "natural-id":
            ids = len(np.unique(columns[by]))
            if num_partitions is not None and num_partitions != ids:
                raise ValueError(f"flwr-partitioner natural-id makes one partition per {by} ({ids} here), not {num_partitions}")
        elif num_partitions is None:
            raise ValueError(f"flwr-partitioner {kind} needs num_partitions")
        partitioner = make_partitioner(kind, int(num_partitions or 0), alpha=alpha, classes_per_partition=classes_per_partition,
                                       seed=seed, partition_by=by)
    partitioner.dataset = ds
    return [np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)) for i in range(partitioner.num_partitions)]


def partition_for(cfg: Any, kind: str, num_partitions: int, labels: np.ndarray, groups: np.ndarray | None) -> list[np.ndarray]:
    """A run's partitions with flwr-datasets' ``kind``: ``data.alpha`` (dirichlet), ``data.shards_per_client``
    (pathological: classes per partition), ``run.seed`` (the shuffle and the partitioner's draws)."""
    d = cfg.data
    return flwr_partition(labels, num_partitions, kind, alpha=d.alpha, classes_per_partition=d.shards_per_client,
                          seed=cfg.run.seed, groups=groups)
