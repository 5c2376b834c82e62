"""How a federation's samples are split among its clients."""

from __future__ import annotations

import math

import numpy as np

from baffle.config.choices import PARTITION_SCHEMES  # the one list of valid choices per key


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
    groups: np.ndarray | None = None,
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
        - "domain": the data's natural groups (``groups``, one int per sample: a sentence's domain). With G
          groups, ``num_clients`` must be a multiple of G; each group is split iid among its own
          ``num_clients / G`` clients (clients 0.. of group 0 first), so clients differ as the groups do.

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
    elif scheme == "domain":
        parts = _by_group(groups, n, num_clients, rng)
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


def _by_group(groups: np.ndarray | None, n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The "domain" scheme: every group split iid among the same number of clients."""
    if groups is None:
        raise ValueError("partition scheme 'domain' needs the samples' groups (a dataset with domains, e.g. data.name=vader)")
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must hold one group per sample ({n}), got shape {g.shape}")
    names = np.unique(g)
    if num_clients % len(names):
        raise ValueError(f"partition 'domain': {num_clients} clients cannot be split evenly over the data's "
                         f"{len(names)} domains; use a multiple of {len(names)}")
    per = num_clients // len(names)
    parts: list[np.ndarray] = []
    for name in names:
        idx = np.flatnonzero(g == name)
        if len(idx) < per:
            raise ValueError(f"partition 'domain': domain {name} has {len(idx)} samples for {per} clients")
        parts += np.array_split(rng.permutation(idx), per)
    return parts
