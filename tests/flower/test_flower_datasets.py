"""flwr-datasets partitioners on baffle's data (baffle.flower.datasets): which partitions equal baffle's own
(baffle.data.partition), index for index, and how the others differ, as docs/flower.md states."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

pytest.importorskip("flwr")

from baffle.data.partition import partition  # noqa: E402
from baffle.flower import datasets as fd  # noqa: E402


def labels(n: int = 2000, classes: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n)


def classes_of(y: np.ndarray, parts: list[np.ndarray]) -> list[int]:
    return [len(np.unique(y[p])) for p in parts]


def counts(y: np.ndarray, parts: list[np.ndarray], classes: int = 10) -> np.ndarray:
    return np.stack([np.bincount(y[p], minlength=classes) for p in parts])


def assert_partition(parts: list[np.ndarray], n: int) -> None:
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))  # disjoint, covering
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)


def test_missing_flwr_datasets_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr_datasets", None)
    monkeypatch.setitem(sys.modules, "flwr_datasets.partitioner", None)
    with pytest.raises(fd.FlowerDatasetsMissing, match=r"^flwr-datasets is not installed: .*pip install flwr-datasets==\d"):
        fd.flwr_partition(labels(), 4)
    from baffle.flower.config import parse_run_config  # the app itself does not need it

    parse_run_config({})


needs_flwr_datasets = pytest.mark.skipif(importlib.util.find_spec("flwr_datasets") is None,
                                         reason=f"flwr-datasets not installed ({fd.FLWR_DATASETS_PACKAGE})")


@needs_flwr_datasets
@pytest.mark.parametrize("n, parts, seed", [(2000, 10, 0), (1003, 7, 5), (60, 60, 3), (12345, 100, 42)])
def test_iid_partitioner_is_baffles_iid_index_for_index(n, parts, seed):
    y = labels(n)
    ours = partition(y, parts, "iid", seed=seed)
    theirs = fd.flwr_partition(y, parts, "iid", seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(ours, fd.flwr_partition(y, parts, "iid", seed=seed + 1)))


@needs_flwr_datasets
def test_natural_id_is_baffles_domain_with_one_client_per_domain():
    y = labels(900)
    groups = np.random.default_rng(7).integers(0, 3, 900) * 5 + 2  # 3 domains, ids 2, 7, 12
    ours = partition(y, 3, "domain", groups=groups, seed=0)
    theirs = fd.flwr_partition(y, 3, "natural-id", groups=groups, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    by_label = fd.flwr_partition(y, 10, "natural-id")  # no domains: one partition per class
    assert classes_of(y, by_label) == [1] * 10 and [int(y[p[0]]) for p in by_label] == list(range(10))
    with pytest.raises(ValueError, match="one partition per label"):
        fd.flwr_partition(y, 4, "natural-id")


@needs_flwr_datasets
def test_dirichlet_same_model_other_draws():
    y = labels(5000)
    ours = partition(y, 10, "dirichlet", alpha=0.3, seed=0)
    theirs = fd.flwr_partition(y, 10, "dirichlet", alpha=0.3, seed=0)
    assert_partition(theirs, len(y))
    assert not any(np.array_equal(a, b) for a, b in zip(ours, theirs))  # other draws: no partition in common
    # the same model: skewed class mixes at small alpha ...
    for p in (ours, theirs):
        c = counts(y, p)
        assert np.mean(c.max(1) / c.sum(1)) > 0.3  # IID would give ~0.12
    # ... and at a huge alpha both cut each class into equal shares with the same rule, int(cumsum(p) * n)
    flat_ours = counts(y, partition(y, 10, "dirichlet", alpha=1e7, seed=0))
    flat_theirs = counts(y, fd.flwr_partition(y, 10, "dirichlet", alpha=1e7, seed=0))
    assert np.abs(flat_ours - flat_theirs).max() <= 1


@needs_flwr_datasets
def test_pathological_is_not_baffles_shard():
    y = labels(3000)
    theirs = fd.flwr_partition(y, 20, "pathological", classes_per_partition=2, seed=0)
    assert_partition(theirs, len(y))
    assert classes_of(y, theirs) == [2] * 20  # exactly k classes each
    assert all(i % 10 in y[p] for i, p in enumerate(theirs))  # first-deterministic: partition i holds class i mod 10
    ours = partition(y, 20, "shard", shards_per_client=2, seed=0)
    assert max(classes_of(y, ours)) <= 4 and classes_of(y, ours) != [2] * 20  # a shard may straddle two classes
    assert not any(np.array_equal(a, b) for a, b in zip(ours, theirs))


@needs_flwr_datasets
def test_any_flwr_partitioner_object_works():
    from flwr_datasets.partitioner import ShardPartitioner

    y = labels(1000)
    parts = fd.flwr_partition(y, partitioner=ShardPartitioner(5, "label", num_shards_per_partition=2, seed=3), seed=3)
    assert len(parts) == 5 and all(len(p) for p in parts)


@needs_flwr_datasets
def test_flower_app_flwr_partitioner_iid_trains_as_baffles_partition(tmp_path, monkeypatch):
    """End to end: the nodes of a Flower run with flwr-partitioner=iid hold baffle's iid partitions, so the run
    is bit-identical to the default one; dirichlet gives the nodes flwr-datasets' split."""
    from baffle.flower import node
    from baffle.flower.config import parse_run_config
    from baffle.flower.inmemory import run_inmemory
    from baffle.sim.factory import load_train
    from test_flower import result, tiny

    monkeypatch.setenv("BAFFLE_CACHE", str(tmp_path / "cache"))
    node._partition_data.cache_clear()
    base = tiny(tmp_path, "base")
    run_inmemory(base, 3)
    via = tiny(tmp_path, "flwr-iid", **{"flwr-partitioner": "iid"})
    run_inmemory(via, 3)
    assert result(via)["weights_sha256"] == result(base)["weights_sha256"]
    rc = tiny(tmp_path, "flwr-dir", **{"flwr-partitioner": "dirichlet", "data-alpha": 1.0})
    cfg, opts = parse_run_config(rc)
    train, _ = load_train(cfg)
    want = fd.flwr_partition(train.y.numpy(), 3, "dirichlet", alpha=1.0, seed=cfg.run.seed)
    got = node.partition_data(cfg, 1, 3, opts.flwr_partitioner)
    assert np.array_equal(got.y.numpy(), train.y.numpy()[want[1]])
    run_inmemory(rc, 3)
    assert result(rc)["rounds_done"] == 3 and result(rc)["weights_sha256"] != result(base)["weights_sha256"]
