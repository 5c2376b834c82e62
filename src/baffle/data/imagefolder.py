"""Image datasets in the ImageFolder layout, from a directory or straight from a .tar/.tar.gz archive.

Layout: ``<split>/<class>/<image>`` with splits ``train`` and ``test`` (optionally all under one top-level
folder, as archives usually are), e.g. ``cifar10/train/airplane/0000.jpg``. Labels are the index of the class
folder in the sorted list of class names (torchvision's ImageFolder rule; for CIFAR-10 it is also the
official label order).

Decoding tens of thousands of JPEGs takes a while and the result is a few uint8 arrays, so a source is read
once, without extracting anything to disk, and its arrays are cached as one .npz in the user's cache
directory (:mod:`baffle.data.cache`), keyed by a checksum of the source: the archive's bytes, or a
directory's file names, sizes and modification times. A changed source gets a new key and is re-read.
The per-channel mean and std of the training images are computed at the same time, for datasets that
have no published statistics.

Every problem with a source is one line naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from baffle.data.cache import CACHE_FORMAT, cache_dir, cached_arrays

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".webp", ".tif", ".tiff")
FOLDER_SPLITS = ("train", "test")
LAYOUT = "<split>/<class>/<image> with splits train and test"


class ImageFolderError(ValueError):
    """A source that exists but is not an ImageFolder dataset; the message names the file and the problem."""


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".tar", ".tar.gz", ".tgz"))


def source_key(path: Path) -> str:
    """Checksum of a source: an archive's bytes, or a directory's (relative path, size, mtime) listing."""
    h = hashlib.sha256(f"imagefolder-{CACHE_FORMAT}".encode())
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                st = full.stat()
                h.update(f"{full.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _entries(path: Path) -> Iterator[tuple[str, bytes]]:
    """(relative posix path, bytes) of every image file of the source, in storage order."""
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                    full = Path(dirpath) / name
                    yield full.relative_to(path).as_posix(), full.read_bytes()
        return
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith("."):
                    f = tf.extractfile(member)
                    if f is not None:
                        yield (member.name[2:] if member.name.startswith("./") else member.name), f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(":")  # tarfile's can span lines
        raise ImageFolderError(f"{path}: not a readable .tar/.tar.gz archive ({detail}); expected {LAYOUT}") from None


def _split_of(name: str) -> tuple[tuple[str, ...], str, str] | None:
    """(prefix folders, split, class) of an image path, or None when it is not under a split folder."""
    parts = name.split("/")
    if len(parts) < 3 or parts[-3] not in FOLDER_SPLITS:
        return None
    return tuple(parts[:-3]), parts[-3], parts[-2]


def _decode(path: Path, name: str, data: bytes) -> np.ndarray:
    from PIL import Image  # pillow: a matplotlib dependency, needed only here

    try:
        with Image.open(io.BytesIO(data)) as img:
            mode = "L" if img.mode in ("1", "L", "I;16", "I") else "RGB"
            arr = np.asarray(img.convert(mode), dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
        raise ImageFolderError(f"{path}: {name} is not a readable image ({type(exc).__name__}: {exc})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_imagefolder(path: Path) -> dict[str, np.ndarray]:
    """Decode every image of the source: ``{train,test}_{x,y}`` (uint8 N x C x H x W, int64), ``classes``
    (sorted class names), ``mean``/``std`` (per channel, training images scaled to [0, 1]).

    Images are ordered by (class, file name) within a split, whatever the order in the archive.
    """
    items: dict[str, list[tuple[str, str, np.ndarray]]] = {s: [] for s in FOLDER_SPLITS}
    prefix: tuple[str, ...] | None = None
    first: tuple[str, tuple[int, ...]] | None = None
    for name, data in _entries(path):
        where = _split_of(name)
        if where is None:
            continue
        pre, split, cls = where
        if prefix is None:
            prefix = pre
        elif pre != prefix:
            raise ImageFolderError(
                f"{path}: {name} is not under {'/'.join(prefix) or 'the top level'}; expected {LAYOUT} under one folder"
            )
        img = _decode(path, name, data)
        if first is None:
            first = (name, img.shape)
        elif img.shape != first[1]:
            shape = "x".join(map(str, img.shape))
            raise ImageFolderError(
                f"{path}: {name} is {shape} (C x H x W) but {first[0]} is {'x'.join(map(str, first[1]))}; all images must share one size and colour mode"
            )
        items[split].append((cls, name, img))
    missing = [s for s in FOLDER_SPLITS if not items[s]]
    if missing:
        raise ImageFolderError(f"{path}: no images for split {' and '.join(missing)}; expected {LAYOUT}")
    classes = sorted({cls for split in items.values() for cls, _, _ in split})
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray] = {"classes": np.array(classes)}
    for split, rows in items.items():
        rows.sort(key=lambda r: (r[0], r[1]))
        out[f"{split}_x"] = np.stack([img for _, _, img in rows])
        out[f"{split}_y"] = np.array([index[cls] for cls, _, _ in rows], dtype=np.int64)
    out["mean"], out["std"] = channel_stats(out["train_x"])
    return out


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], exactly, from 256-bin histograms."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        n = counts.sum()
        mean = float(counts @ levels / n)
        means.append(mean)
        stds.append(float(np.sqrt(counts @ (levels - mean) ** 2 / n)))
    return np.array(means), np.array(stds)


def load_imagefolder(path: Path, key: str | None = None) -> dict[str, np.ndarray]:
    """:func:`read_imagefolder`'s arrays, decoded once and then read from the user's cache directory.

    The cache file is named by the source's location and its checksum; writing it removes the caches of
    earlier contents of the same location, so editing a dataset does not fill the disk. ``key`` is the
    source's :func:`source_key` when the caller has it already (hashing a large archive takes a while).
    """
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    target = cache_dir() / f"imagefolder-{where}-{(key or source_key(path))[:24]}.npz"
    return cached_arrays(target, lambda: read_imagefolder(path), stale_glob=f"imagefolder-{where}-*.npz")
