"""Writers of tiny datasets in the real on-disk layouts, so tests exercise the real loaders.

CIFAR cannot ship with baffle, so tests (and users without the data) run the real CIFAR reader on a
fixture written here, byte-compatible with the official python-pickle files.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from baffle.data.registry import CIFAR10_CLASSES, CIFAR100_CLASSES
from baffle.protocol import streams

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
    rng = streams.rng(seed, streams.CIFAR_FIXTURE)
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


def write_imagefolder_fixture(
    path: str | os.PathLike[str],
    *,
    classes: tuple[str, ...] = ("cat", "dog", "frog"),
    n_train: int = 4,
    n_test: int = 2,
    size: int = 8,
    channels: int = 3,
    top: str = "data",
    seed: int = 0,
) -> Path:
    """Write a tiny ImageFolder dataset (``top/{train,test}/<class>/NNNN.png``) and return ``path``.

    ``path`` ending in .tar, .tar.gz or .tgz writes an archive (members in a shuffled order, as real
    archives need not be sorted), anything else a directory. Images are lossless PNGs of class-coloured
    noise, so a test can compare decoded pixels exactly; ``n_train``/``n_test`` are per class.
    """
    import io
    import tarfile

    from PIL import Image

    rng = streams.rng(seed, streams.IMAGEFOLDER_FIXTURE)
    files: list[tuple[str, bytes]] = []
    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(classes):
            for j in range(n):
                base = (40 + 60 * c) % 256
                img = np.clip(base + rng.integers(-30, 31, size=(size, size, channels)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(img[:, :, 0] if channels == 1 else img).save(buf, format="PNG")
                files.append((f"{top}/{split}/{cls}/{j:04d}.png" if top else f"{split}/{cls}/{j:04d}.png", buf.getvalue()))
    out = Path(path)
    if out.name.endswith((".tar", ".tar.gz", ".tgz")):
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:gz" if out.name.endswith(("gz", "tgz")) else "w") as tf:
            for i in rng.permutation(len(files)):
                name, data = files[i]
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    else:
        for name, data in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(data)
    return out
