"""Text datasets: the VADER sentence set (Hutto & Gilbert, ICWSM 2014) as binary sentiment, tokenised for BERT.

The data: 23,703 English sentences, each with the mean sentiment of >= 20 human raters (-4..+4), in four domains:
movie-review snippets (10,605), tweets (4,200), NYT editorial snippets (5,190) and Amazon product-review snippets
(3,708). It ships inside the ``vaderSentiment==3.3.2`` *source* distribution (``additional_resources/
hutto_ICWSM_2014.tar.gz``; the wheel drops it). ``scripts/setup.sh`` downloads that sdist once into
``<venv>/share/baffle/`` (:func:`data_home`); nothing is fetched at run time. Research use; cite the paper.

The task, and the choices kept:

* label = mean rating > 0 (positive, 1) or < 0 (negative, 0); sentences with ``|mean| < 0.5``
  (:data:`MIN_ABS_MEAN`) are dropped as neither: 19,459 remain (movie 10,072, tweets 3,432, NYT 2,970,
  Amazon 2,985).
* a fixed split, the same for every run: 20% of each domain's kept sentences (a permutation drawn from
  :data:`SPLIT_SEED`, not the run seed) are the test set, so test accuracy is comparable across runs.
* tokenised with the model's own ``tokenizer.json`` through the ``tokenizers`` library, truncated/padded to
  :data:`MAX_LENGTH` = 64 tokens (99.6% of the sentences fit whole). ``data.image_size`` does not apply.
* ``groups`` = the domain (0 movie, 1 tweets, 2 NYT, 3 Amazon): ``data.partition=domain`` gives one client per
  domain (or a multiple), a natural non-IID federation; iid and dirichlet (over labels) work as for images.

Representation: ``Dataset.x`` is float32 ``[N, 2, 1, L]``, channel 0 the token ids, channel 1 the attention mask.
Why not int64 ids: ``Dataset``, the minibatch samplers, every estimator engine, the evaluation and the ONNX
client all move one float32 tensor of shape N x C x H x W; token ids are exact in float32 (vocabulary 30,522 <
2**24), the model casts them back (:func:`baffle.nlp.bert.split_input`), so no code path needs a text case. The
mask is explicit rather than derived from ``ids != [PAD]`` so a tokenizer whose pad id is a real token works too.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from baffle.data.cache import CACHE_FORMAT, cache_dir, cached_arrays, file_signature, readonly
from baffle.data.dataset import Dataset

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_INSTALL = (
    "bash scripts/setup.sh, or: pip download --no-deps --no-binary vadersentiment vaderSentiment==3.3.2 "
    "-d <venv>/share/baffle (or pass data.root=PATH to that .tar.gz, its hutto_ICWSM_2014.tar.gz or the extracted folder)"
)
_INNER = "hutto_ICWSM_2014.tar.gz"
DOMAINS: tuple[str, ...] = ("movie", "tweets", "nyt", "amazon")  # group ids 0..3
_FILES = {
    "movie": "movieReviewSnippets_GroundTruth.txt", "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt", "amazon": "amazonReviewSnippets_GroundTruth.txt",
}
MIN_ABS_MEAN = 0.5
MAX_LENGTH = 64
TEST_FRACTION = 0.2
SPLIT_SEED = 2014
CLASSES = ("negative", "positive")


class TextDataNotFoundError(FileNotFoundError):
    """The text data is not on disk; the one-line message says how to get it."""


def data_home() -> Path:
    """Where ``scripts/setup.sh`` puts data that ships as a package file: ``$BAFFLE_DATA`` or ``<venv>/share/baffle``."""
    env = os.environ.get("BAFFLE_DATA")
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "baffle"


def vader_source(root: str | os.PathLike[str] | None = None) -> Path:
    """The VADER source: the sdist, its inner ``hutto_ICWSM_2014.tar.gz``, or a folder holding either or the
    extracted ``*_GroundTruth.txt`` files (default: the sdist in :func:`data_home`)."""
    r = Path(root).expanduser() if root else data_home() / VADER_SDIST
    if r.is_dir():
        for cand in (r / VADER_SDIST, r / _INNER, r / "hutto_ICWSM_2014"):
            if cand.exists():
                return cand
        if (r / _FILES["movie"]).is_file():
            return r
    elif r.is_file():
        return r
    raise TextDataNotFoundError(f"vader: {r} holds no VADER data; install it with: {VADER_INSTALL}")


def _read_member_tar(tf: tarfile.TarFile) -> dict[str, bytes]:
    out = {}
    for m in tf.getmembers():
        base = m.name.rsplit("/", 1)[-1]
        if m.isfile() and base in _FILES.values():
            out[base] = tf.extractfile(m).read()  # type: ignore[union-attr]
        elif m.isfile() and base == _INNER:
            with tarfile.open(fileobj=io.BytesIO(tf.extractfile(m).read())) as inner:  # type: ignore[union-attr]
                out.update(_read_member_tar(inner))
    return out


def read_vader(source: Path) -> list[tuple[int, float, str]]:
    """(domain id, mean rating, sentence) of every sentence, in file order (files read as latin-1, as shipped).
    Reads members by name only: nothing in the archive is extracted to disk."""
    if source.is_dir():
        raw = {f: (source / f).read_bytes() for f in _FILES.values() if (source / f).is_file()}
    else:
        with tarfile.open(source) as tf:
            raw = _read_member_tar(tf)
    missing = [f for f in _FILES.values() if f not in raw]
    if missing:
        raise TextDataNotFoundError(f"vader: {source} lacks {', '.join(missing)}; install it with: {VADER_INSTALL}")
    rows = []
    for d, domain in enumerate(DOMAINS):
        for line_no, line in enumerate(raw[_FILES[domain]].decode("latin-1").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise ValueError(f"vader: {_FILES[domain]} line {line_no} is not id<TAB>mean<TAB>text")
            rows.append((d, float(parts[1]), "\t".join(parts[2:]).strip()))
    return rows


def split_indices(domains: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Sorted train/test indices: the same fraction of every domain is test, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    test = []
    for d in np.unique(domains):
        idx = rng.permutation(np.flatnonzero(domains == d))
        test.append(idx[: int(round(test_fraction * len(idx)))])
    is_test = np.zeros(len(domains), dtype=bool)
    is_test[np.concatenate(test)] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


def tokenize(texts: list[str], tokenizer_path: str | os.PathLike[str] | None = None, max_length: int = MAX_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask), int64 [N, max_length] each: the tokenizer's own encoding ([CLS] ... [SEP], then [PAD])."""
    from baffle.nlp.pretrained import load_tokenizer

    tok = load_tokenizer(tokenizer_path, max_length)
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64).reshape(len(texts), max_length)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64).reshape(len(texts), max_length)
    return ids, mask


def _build_vader(source: Path, tokenizer_path: str | None) -> dict[str, np.ndarray]:
    rows = read_vader(source)
    means = np.array([m for _, m, _ in rows])
    keep = np.flatnonzero(np.abs(means) >= MIN_ABS_MEAN)
    domains = np.array([rows[i][0] for i in keep], dtype=np.int64)
    labels = (means[keep] > 0).astype(np.int64)
    ids, mask = tokenize([rows[i][2] for i in keep], tokenizer_path)
    x = np.stack([ids, mask], 1)[:, :, None, :].astype(np.float32)  # [N, 2, 1, L]
    out = {}
    for split, idx in split_indices(domains).items():
        out[f"{split}_x"], out[f"{split}_y"], out[f"{split}_g"] = x[idx], labels[idx], domains[idx]
    return out


@functools.lru_cache(maxsize=4)
def _load_vader(signature: tuple, tokenizer: tuple) -> dict[str, np.ndarray]:
    """Both splits, tokenised: memoized per process, and on disk (an .npz in the user's cache) on what they
    depend on: the source's and the tokenizer's signatures and the task's constants."""
    facts = (signature, tokenizer, MIN_ABS_MEAN, MAX_LENGTH, TEST_FRACTION, SPLIT_SEED, CACHE_FORMAT)
    key = hashlib.sha256(repr(facts).encode()).hexdigest()[:16]
    arrays = cached_arrays(cache_dir() / f"vader-{key}.npz", lambda: _build_vader(Path(signature[0]), tokenizer[0]))
    return {k: readonly(v) for k, v in arrays.items()}


def load_text_dataset(
    name: str,
    *,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    num_samples: int | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
) -> Dataset:
    """One split of a text dataset (only ``"vader"`` today) as a :class:`Dataset` with ``groups`` = domain.

    ``tokenizer``: a ``tokenizer.json`` (default: all-MiniLM-L6-v2's, from its installed package).
    ``num_samples`` keeps the first ones (quick runs); the split itself never depends on it."""
    if name != "vader":
        raise ValueError(f"unknown text dataset {name!r}; valid: vader")
    src = vader_source(root)
    if tokenizer is None:
        from baffle.nlp.pretrained import minilm_dir

        tokenizer = minilm_dir() / "tokenizer.json"
    source_sig = file_signature(src) if src.is_file() else (str(src.resolve()), 0, 0)
    arrays = _load_vader(source_sig, file_signature(Path(tokenizer).expanduser()))
    x, y, g = arrays[f"{split}_x"], arrays[f"{split}_y"], arrays[f"{split}_g"]
    if num_samples is not None:
        x, y, g = x[:num_samples], y[:num_samples], g[:num_samples]
    return Dataset(x=torch.from_numpy(x.copy()), y=torch.from_numpy(y.copy()), num_classes=2, name=name,
                   classes=CLASSES, groups=torch.from_numpy(g.copy()))
