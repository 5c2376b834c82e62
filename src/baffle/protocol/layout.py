"""The flat parameter vector: which parameters are perturbed, and where each lives in the vector.

The server, the torch client and the ONNX client must agree on this bit for bit: a direction eps_k is one
flat vector of length n, and entry i must perturb the same weight everywhere. The layout is
``named_parameters`` order, filtered by the glob patterns of ``model.trainable``. Names only, no torch:
the torch side (``baffle.estimator.select_parameters``) and the ONNX client both call :func:`select_names`.
"""

from __future__ import annotations

import fnmatch
from typing import Mapping, Sequence

import numpy as np


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether a parameter name matches one of the glob patterns (case-sensitive, ``fnmatch`` syntax)."""
    return any(fnmatch.fnmatchcase(name, pat) for pat in patterns)


def select_names(names: Sequence[str], trainable: Sequence[str] | None = None) -> list[str]:
    """The perturbed parameter names, in ``names`` order.

    ``trainable`` is a list of glob patterns over parameter names (``["fc.*", "*.norm*"]``); None or
    empty means every parameter. A pattern that matches nothing is an error: a typo would otherwise
    silently freeze the whole model.
    """
    names = list(names)
    if not trainable:
        return names
    for pat in trainable:
        if not any(matches(n, [pat]) for n in names):
            raise ValueError(f"trainable pattern {pat!r} matches no parameter; parameters are: {', '.join(names)}")
    return [n for n in names if matches(n, trainable)]


class FlatLayout:
    """Where each perturbed tensor lives in the flat vector of length n (numpy arrays in and out)."""

    def __init__(self, names: Sequence[str], weights: Mapping[str, np.ndarray]):
        self.names = list(names)
        self.shapes = [tuple(np.shape(weights[n])) for n in self.names]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.n = int(sum(self.sizes))

    def flatten(self, weights: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(weights[k], dtype=np.float32).reshape(-1) for k in self.names])

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out, offset = {}, 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            out[name] = flat[offset : offset + size].reshape(shape)
            offset += size
        return out
