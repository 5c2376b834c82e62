"""Deterministic, resumable minibatch sampling over one client's sample indices (numpy only).

The torch client and the ONNX client draw their minibatches with this one class, so a client swapped
from one runtime to the other (a mixed federation) draws exactly the same batches.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from baffle.protocol import streams


class BatchSampler:
    """Deterministic, resumable minibatches over one client's sample indices.

    Each epoch is a fresh permutation drawn from ``numpy.random.default_rng([seed, epoch])``, so
    the whole sampler state is two integers (epoch, position): a checkpoint stores
    :meth:`state_dict` and a resumed run draws exactly the same batches as an uninterrupted one.
    The last batch of an epoch may be short unless ``drop_last=True``; a client with fewer than
    ``batch_size`` samples therefore gets its whole dataset as one batch.
    """

    def __init__(
        self, indices: np.ndarray, batch_size: int, seed: int, *, drop_last: bool = False
    ) -> None:
        idx = np.asarray(indices)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
        if idx.size == 0:
            raise ValueError("indices is empty: a client needs at least one sample")
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and batch_size > idx.size:
            raise ValueError(f"drop_last with batch_size={batch_size} > {idx.size} samples yields no batch")
        self.indices = idx.astype(np.int64, copy=True)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0
        self._perm: np.ndarray | None = None
        self._perm_epoch = -1

    @property
    def num_batches(self) -> int:
        """Batches per epoch."""
        n = self.indices.size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _permutation(self) -> np.ndarray:
        if self._perm_epoch != self.epoch:
            rng = streams.epoch_rng(self.seed, self.epoch)
            self._perm = self.indices[rng.permutation(self.indices.size)]
            self._perm_epoch = self.epoch
        assert self._perm is not None
        return self._perm

    def _epoch_done(self) -> bool:
        remaining = self.indices.size - self.position
        return remaining <= 0 or (self.drop_last and remaining < self.batch_size)

    def next_batch(self) -> np.ndarray:
        """The next minibatch (global sample indices), rolling over into a new epoch as needed."""
        if self._epoch_done():
            self.epoch += 1
            self.position = 0
        perm = self._permutation()
        batch = perm[self.position : self.position + self.batch_size].copy()
        self.position += len(batch)
        return batch

    def epoch_batches(self) -> Iterator[np.ndarray]:
        """Yield the remaining batches of the current epoch (a full epoch if none were drawn yet
        or the previous epoch just ended); for local-epoch (FedAvg-style) training."""
        if self._epoch_done():
            self.epoch += 1
            self.position = 0
        start_epoch = self.epoch
        while self.epoch == start_epoch and not self._epoch_done():
            yield self.next_batch()

    def state_dict(self) -> dict[str, int | bool]:
        """JSON-serializable state; enough to resume the exact batch sequence."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_indices": int(self.indices.size),
            "drop_last": self.drop_last,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; refuses a state from a differently configured sampler,
        because resuming it would silently draw different batches."""
        for key in ("seed", "batch_size", "num_indices", "drop_last"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ValueError(f"BatchSampler state has {key}={state[key]!r}, this sampler has {mine!r}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.indices.size:
            raise ValueError(f"invalid BatchSampler state: epoch={epoch}, position={position}")
        self.epoch, self.position = epoch, position
