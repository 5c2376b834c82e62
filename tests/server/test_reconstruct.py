"""Server reconstruction: v1 keeps its pinned float64 arithmetic, v2 accumulates in float32 in blocks."""

import tracemalloc

import numpy as np
import pytest

from baffle import reconstruct as rec
from baffle.protocol import noise


def _reference(d: np.ndarray, seeds: np.ndarray, sigma: float, n: int, kind: str) -> np.ndarray:
    return (d.astype(np.float64) @ noise.directions(seeds, n, kind).astype(np.float64)) / (len(seeds) * sigma)


def test_v1_is_the_original_float64_chunked_matmul():
    seeds, d = noise.round_seeds(1, 1, 10), np.random.default_rng(0).standard_normal(10).astype(np.float32)
    a = rec.reconstruct(d, seeds, 0.1, 500, chunk=3)
    b = rec.reconstruct(d, seeds, 0.1, 500, chunk=10)
    manual = (d.astype(np.float64) @ noise.directions(seeds, 500)) / (10 * 0.1)
    assert np.array_equal(b, manual.astype(np.float32))
    assert np.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["v2-gauss", "v2-rademacher"])
def test_v2_float32_blocks_match_float64(kind):
    n = 2 * rec.BLOCK + 1234  # several blocks and a ragged tail
    seeds, d = noise.round_seeds(3, 4, 50), np.random.default_rng(1).standard_normal(50).astype(np.float32)
    g = rec.reconstruct(d, seeds, 1e-2, n, noise=kind)
    ref = _reference(d, seeds, 1e-2, n, kind)
    assert g.dtype == np.float32 and g.shape == (n,)
    assert np.max(np.abs(g - ref)) <= 1e-6 * np.max(np.abs(ref))  # float32 accumulation of 50 terms
    assert np.array_equal(g, rec.reconstruct(d, seeds, 1e-2, n, noise=kind, threads=2))


@pytest.mark.parametrize("kind", ["v2-gauss", "v2-rademacher"])
def test_v2_torch_path_is_bit_identical(kind):
    pytest.importorskip("torch")
    n = 70_001
    seeds, d = noise.round_seeds(7, 0, 9), np.random.default_rng(2).standard_normal(9).astype(np.float32)
    g = rec.reconstruct(d, seeds, 1e-3, n, noise=kind)
    assert np.array_equal(rec.reconstruct_torch(d, seeds, 1e-3, n, noise=kind, device="cpu", block=30_000).numpy(), g)


def test_v2_peak_memory_is_about_one_parameter_vector():
    n, K = 1_000_000, 20
    seeds, d = noise.round_seeds(0, 0, K), np.ones(K, dtype=np.float32)
    tracemalloc.start()
    rec.reconstruct(d, seeds, 1e-3, n, noise="v2-gauss")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= 1.25 * 4 * n  # the float32 output plus a few cache-sized blocks (goal: <= 2x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="loss differences"):
        rec.reconstruct(np.ones(3), noise.round_seeds(0, 0, 4), 0.1, 10)
    with pytest.raises(ValueError, match="unknown noise kind"):
        rec.reconstruct(np.ones(4), noise.round_seeds(0, 0, 4), 0.1, 10, noise="v3")
