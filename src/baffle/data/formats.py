"""Readers of the on-disk dataset formats: MNIST CSV, IDX (MNIST/Fashion-MNIST), CIFAR python pickles.

Each returns uint8 images N x C x H x W and integer labels, and refuses a file that does not have the
shape its format promises, naming the file.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np


def parse_mnist_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def read_maybe_gz(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def parse_idx(path: Path, expected_dims: int) -> np.ndarray:
    """Parse an IDX file (the MNIST/Fashion-MNIST container): big-endian header then uint8 data."""
    raw = read_maybe_gz(path)
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


IDX_PREFIX = {"train": "train", "test": "t10k"}


def find_idx_pair(root: Path, split: str) -> tuple[Path, Path] | None:
    """Locate ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (also the ``images.idx3`` spelling)."""
    prefix = IDX_PREFIX[split]
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


def load_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x = parse_idx(images, 3)
    y = parse_idx(labels, 1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    return x.reshape(x.shape[0], 1, x.shape[1], x.shape[2]), y


class CifarUnpickler(pickle.Unpickler):
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


def load_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = CifarUnpickler(f, encoding="bytes").load()
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise ValueError(f"{path}: not a CIFAR python batch (needs keys b'data' and {label_key!r})")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: data {data.shape} / labels {labels.shape} are not N x 3072 / N")
    return data.reshape(-1, 3, 32, 32), labels
