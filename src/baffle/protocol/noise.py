"""Seeded Gaussian directions: the only randomness that crosses the wire is a seed.

A perturbation direction eps ~ N(0, I_n) is a pure function of one 64-bit seed. The server and every
client regenerate it bit-identically, in any process and on any machine, so noise is never stored or sent.

The generator is defined with numpy alone (no torch) so that an inference-only client (ONNX Runtime +
numpy) reproduces it too. The specification, "baffle-noise-v1":

* round seeds: ``numpy.random.SeedSequence([run_seed, round, *extra]).generate_state(K, uint64)``
  gives the K seeds of a round (``extra`` distinguishes e.g. a client's private local-step seeds);
* direction: ``numpy.random.Generator(numpy.random.Philox(key=seed)).standard_normal(n, float32)``,
  i.e. the counter-based Philox-4x32-10 bit generator keyed by the seed, then numpy's float32 ziggurat.

Philox's stream is frozen by numpy's compatibility policy; ``tests/test_noise.py`` pins a test vector so
that any change in numpy's normal sampler would be caught before it silently breaks a federation.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

NOISE_SPEC = "baffle-noise-v1"


def round_seeds(run_seed: int, round_idx: int, num_directions: int, *extra: int) -> np.ndarray:
    """The K direction seeds of one round: shared by all clients of that round (or private with ``extra``)."""
    if num_directions < 1:
        raise ValueError(f"num_directions must be >= 1, got {num_directions}")
    entropy = [int(run_seed), int(round_idx), *[int(e) for e in extra]]
    if any(e < 0 for e in entropy):
        raise ValueError(f"seed components must be non-negative, got {entropy}")
    return np.random.SeedSequence(entropy).generate_state(num_directions, np.uint64)


def direction(seed: int | np.integer, n: int) -> np.ndarray:
    """eps ~ N(0, I_n) as float32, a pure function of ``seed``."""
    gen = np.random.Generator(np.random.Philox(key=int(seed)))
    return gen.standard_normal(n, dtype=np.float32)


def directions(seeds: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Stack of directions, shape (len(seeds), n). Used by the batched engine on a bounded chunk of seeds."""
    out = np.empty((len(seeds), n), dtype=np.float32)
    for i, s in enumerate(seeds):
        out[i] = direction(s, n)
    return out


def iter_direction_chunks(
    seeds: Sequence[int] | np.ndarray, n: int, chunk: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, directions[start:start+chunk]) so memory stays at chunk*n floats."""
    for start in range(0, len(seeds), chunk):
        yield start, directions(seeds[start : start + chunk], n)
