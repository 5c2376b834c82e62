"""Client-side estimator engines behind one typed interface (:class:`Engine`).

``loop`` is the reference (one forward per perturbation), ``batched`` evaluates chunks of perturbed models
as one wide model, ``masked`` restricts directions to a pruning mask, ``fused`` lets one pass serve every
client of a simulated round, ``threads`` picks intra-op threads. :func:`engine_for` (a run's ``[estimator]``
through :func:`make_engine`) is what the simulator and the Flower node call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from baffle.config.choices import ENGINES
from baffle.engine.base import Engine, Perturber
from baffle.engine.batched import BatchedEngine
from baffle.engine.loop import LoopEngine
from baffle.engine.masked import MaskedEngine

if TYPE_CHECKING:
    from baffle.config import EstimatorConfig


def make_engine(name: str, max_memory_mb: int = 512, mask: np.ndarray | None = None, forward_slice: int = 0,
                feature_cache_mb: int = 1024) -> Engine:
    """The engine ``estimator.engine`` names, or the masked engine when the run is pruned.

    A mask wins over the name: the batched interpreter does not apply masks, so a pruned run always
    evaluates with the masked reference loop (as it always has; the pinned pruned run depends on it).
    ``forward_slice`` (``estimator.forward_slice``) is for the loop engines; the batched one refuses it.
    ``feature_cache_mb`` (``estimator.feature_cache_mb``) bounds the cache of a frozen bottom's output per sample:
    the batched engine's (engine/batched/feature_cache.py) or, on the loop path, a prefix-cached model's row store
    (:mod:`baffle.prefix`: BERT, EfficientNet-Lite)."""
    if mask is not None:
        return MaskedEngine(mask, forward_slice)
    if name == "loop":
        return LoopEngine(forward_slice, feature_cache_mb)
    if forward_slice:
        raise ValueError("forward_slice slices the loop engine's forwards; the batched engine bounds memory itself")
    if name == "batched":
        return BatchedEngine(max_memory_mb, feature_cache_mb=feature_cache_mb)
    raise ValueError(f"unknown engine {name!r}; valid: {ENGINES}")


def engine_for(e: "EstimatorConfig", mask: np.ndarray | None = None, augmented: bool = False) -> Engine:
    """The engine of a run's ``[estimator]`` section (the simulator, the Flower nodes and fltrust's server use it).
    ``augmented``: the clients augment their minibatches (``config.data.augments``), so every row is new and a
    feature cache would only fill memory: none then."""
    return make_engine(e.engine, e.max_memory_mb, mask, e.forward_slice, 0 if augmented else e.feature_cache_mb)


__all__ = ["ENGINES", "BatchedEngine", "Engine", "LoopEngine", "MaskedEngine", "Perturber", "engine_for", "make_engine"]
