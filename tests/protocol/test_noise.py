"""The noise generator is the protocol: it must be pinned and identical across processes."""

import functools
import subprocess
import sys

import numpy as np
import pytest

from baffle.protocol import noise

# Test vector of "baffle-noise-v1". If numpy ever changes Philox or its float32 normal sampler,
# this fails before a federation silently diverges.
SEEDS_1234_7 = [13144648137671445561, 14635122877141826822, 15955419434333981606]
DIRECTION_OF_FIRST = [-0.4482283592224121, -1.2766172885894775, 0.15992291271686554, 0.9996436238288879, 0.5700517892837524, -0.21889406442642212]


def test_pinned_test_vector():
    seeds = noise.round_seeds(1234, 7, 3)
    assert seeds.dtype == np.uint64
    assert [int(s) for s in seeds] == SEEDS_1234_7
    eps = noise.direction(int(seeds[0]), 6)
    assert eps.dtype == np.float32
    assert eps.tolist() == DIRECTION_OF_FIRST


def test_directions_are_standard_normal_and_distinct():
    e = noise.directions(noise.round_seeds(0, 0, 4), 100_000)
    assert abs(e.mean()) < 0.01 and abs(e.std() - 1) < 0.01
    assert not np.allclose(e[0], e[1])
    assert np.allclose(e[0], noise.direction(noise.round_seeds(0, 0, 4)[0], 100_000))


def test_rounds_and_extra_components_give_different_seeds():
    a, b, c = noise.round_seeds(0, 1, 8), noise.round_seeds(0, 2, 8), noise.round_seeds(0, 1, 8, 3)
    assert len(set(a.tolist()) & set(b.tolist())) == 0
    assert len(set(a.tolist()) & set(c.tolist())) == 0


def test_bit_identical_in_a_separate_process():
    code = (
        "import numpy as np, sys; from baffle.protocol import noise; "
        "s = noise.round_seeds(99, 5, 3); "
        "sys.stdout.buffer.write(np.concatenate([noise.direction(x, 1000) for x in s]).tobytes())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    here = np.concatenate([noise.direction(x, 1000) for x in noise.round_seeds(99, 5, 3)])
    assert out == here.tobytes()


def test_chunks_cover_all_directions():
    seeds = noise.round_seeds(3, 3, 10)
    parts = list(noise.iter_direction_chunks(seeds, 50, 4))
    assert [s for s, _ in parts] == [0, 4, 8]
    assert np.array_equal(np.concatenate([d for _, d in parts]), noise.directions(seeds, 50))


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_directions"):
        noise.round_seeds(0, 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        noise.round_seeds(-1, 0, 3)


# ---- spec v2 -----------------------------------------------------------------------------------------
# Test vectors of "baffle-noise-v2" for the first seed of round_seeds(1234, 7, 3); the words are SplitMix64's.
V2_SEED = SEEDS_1234_7[0]
V2_WORDS_0 = [16325892473330916229, 14809676218488638027, 17951786601015578699]
V2_WORDS_1E12 = [12407534660101574984, 2972825418795882940]
V2_GAUSS_0 = [0.7592566013336182, 0.5423261523246765, -0.4338609278202057, -0.4338609278202057,
              0.7592566013336182, -1.7354437112808228, 0.21693046391010284, 0.9761871099472046]
V2_GAUSS_1E9 = [0.0, -0.4338609278202057, 0.32539570331573486, 0.5423261523246765,
                1.1931174993515015, 0.8677218556404114, 0.4338609278202057, 0.6507914066314697]
V2_RADEMACHER_60 = [1.0, -1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -1.0, 1.0, 1.0]
V2_RADEMACHER_1E12_5 = [1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
V2_KINDS = ("v2-gauss", "v2-rademacher")
M64 = (1 << 64) - 1
# "auto" is the compiled kernel where it is built (tests/protocol/test_noise_kernel.py), "numpy" the reference.
IMPLS = ("numpy", "auto")


def splitmix64(seed: int, count: int) -> list[int]:
    """The public-domain SplitMix64 generator in plain Python: the spec's word stream, independently."""
    out, state = [], seed
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        out.append(z ^ (z >> 31))
    return out


def reference_element(words: list[int], kind: str, i: int) -> float:
    """One element, straight from the module docstring's definition."""
    if kind == "v2-rademacher":
        return -1.0 if (words[i // 64] >> (i % 64)) & 1 else 1.0
    field = words[i // 4] >> (16 * (i % 4))
    s = sum((field >> (4 * k)) & 0xF for k in range(4)) - 30
    return float(np.float32(s) * np.uint32(0x3DDE2305).view(np.float32))


@pytest.mark.parametrize("impl", IMPLS)
def test_v2_pinned_test_vectors(impl):
    direction = functools.partial(noise.direction, impl=impl)
    assert [int(w) for w in noise.words(V2_SEED, 0, 3)] == V2_WORDS_0
    assert [int(w) for w in noise.words(V2_SEED, 10**12, 2)] == V2_WORDS_1E12
    assert direction(V2_SEED, 8, "v2-gauss").tolist() == V2_GAUSS_0
    assert direction(V2_SEED, 8, "v2-gauss", offset=10**9).tolist() == V2_GAUSS_1E9
    assert direction(V2_SEED, 70, "v2-rademacher")[60:].tolist() == V2_RADEMACHER_60
    assert direction(V2_SEED, 8, "v2-rademacher", offset=10**12 + 5).tolist() == V2_RADEMACHER_1E12_5


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", [0, 1, V2_SEED, M64])
def test_v2_matches_the_written_spec(seed, impl):
    direction = functools.partial(noise.direction, impl=impl)
    words = splitmix64(seed, 300)
    assert [int(w) for w in noise.words(seed, 0, 300)] == words
    assert [int(w) for w in noise.words(seed, 123, 7)] == words[123:130]
    for kind in V2_KINDS:
        n = 64 * 300 if kind == "v2-rademacher" else 1200
        assert direction(seed, n, kind).tolist() == [reference_element(words, kind, i) for i in range(n)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", V2_KINDS)
def test_v2_any_range_without_its_prefix(kind, impl):
    direction = functools.partial(noise.direction, impl=impl)
    block = noise.BLOCK
    full = direction(V2_SEED, 3 * block + 333, kind)
    for offset, n in [(0, 1), (1, 63), (63, 66), (64, 128), (5, block), (block - 3, block + 7), (2 * block + 1, block + 300)]:
        assert np.array_equal(direction(V2_SEED, n, kind, offset=offset), full[offset : offset + n])
    out = np.zeros(100, dtype=np.float32)
    assert direction(V2_SEED, 100, kind, offset=7, out=out) is out and np.array_equal(out, full[7:107])


@pytest.mark.parametrize("kind", V2_KINDS)
def test_v2_torch_is_bit_identical_to_numpy(kind):
    torch = pytest.importorskip("torch")
    from baffle import noise_torch

    block = noise_torch.BLOCK
    for seed in [0, V2_SEED, M64]:
        assert np.array_equal(noise_torch.words(seed, 5, 1000).numpy().view(np.uint64), noise.words(seed, 5, 1000))
        for offset, n in [(0, 1), (3, 70), (63, 65), (64, 128), (1, block + 9), (block - 1, 2 * block + 3)]:
            ref = noise.direction(seed, n, kind, offset=offset)
            for impl in ("torch", "auto"):
                got = noise_torch.direction(seed, n, kind, offset, impl=impl)
                assert got.dtype == torch.float32 and got.numpy().tobytes() == ref.tobytes(), (seed, offset, n, impl)
    buf = torch.empty(2, 50)
    noise_torch.direction(V2_SEED, 100, kind, 9, out=buf, impl="torch")
    assert buf.view(-1).numpy().tobytes() == noise.direction(V2_SEED, 100, kind, offset=9).tobytes()
    seeds = noise.round_seeds(1, 2, 3)
    assert np.array_equal(noise_torch.directions(seeds, 77, kind, impl="torch").numpy(), noise.directions(seeds, 77, kind))


@pytest.mark.parametrize("kind", V2_KINDS)
@pytest.mark.parametrize("block", [1 << 10, 1 << 22])
def test_v2_torch_values_do_not_depend_on_the_block(monkeypatch, kind, block):
    """An accelerator generates in bigger steps than the CPU (noise_torch.DEVICE_BLOCK): the values must be the
    same whatever the step, across step boundaries and at ragged offsets."""
    torch = pytest.importorskip("torch")
    from baffle import noise_torch

    monkeypatch.setattr(noise_torch, "BLOCK", block)
    for offset, n in [(0, 1), (61, 3 * (1 << 10) + 77), (1 << 10, 1 << 10), (10**9 + 3, 5000)]:
        ref = noise.direction(V2_SEED, n, kind, offset=offset)
        got = noise_torch.direction(V2_SEED, n, kind, offset, impl="torch")
        assert got.numpy().tobytes() == ref.tobytes(), (block, offset, n)
    assert np.array_equal(noise_torch.words(M64, 7, 3000).numpy().view(np.uint64), noise.words(M64, 7, 3000))
    assert noise_torch.block_for(torch.device("cpu")) == block
    assert noise_torch.block_for(torch.device("meta")) == noise_torch.DEVICE_BLOCK


def test_v2_torch_v1_passthrough():
    pytest.importorskip("torch")
    from baffle import noise_torch

    assert noise_torch.direction(V2_SEED, 6, "v1").tolist() == DIRECTION_OF_FIRST


def test_v2_moments_and_tails():
    seeds = noise.round_seeds(5, 5, 4)
    g = np.concatenate([noise.direction(s, 500_000, "v2-gauss").astype(np.float64) for s in seeds])
    assert abs(g.mean()) < 0.005 and abs(g.var() - 1) < 0.01
    assert abs((g**4).mean() - 2.698) < 0.03  # discrete Irwin-Hall(4): kurtosis 2.698 (a normal: 3)
    assert np.abs(g).max() <= 30 * float(noise.GAUSS_SCALE) + 1e-6
    assert abs((np.abs(g) > 2).mean() - 0.0417) < 0.002  # exact for this IH(4): 4.17% beyond 2 (a normal: 4.55%)
    assert len(np.unique(g)) == 61
    r = noise.direction(seeds[0], 1_000_000, "v2-rademacher")
    assert set(np.unique(r).tolist()) == {-1.0, 1.0} and abs(r.mean()) < 0.005
    # distinct seeds and kinds give uncorrelated directions
    a, b = noise.direction(seeds[0], 200_000, "v2-gauss"), noise.direction(seeds[1], 200_000, "v2-gauss")
    assert abs(float(a @ b) / 200_000) < 0.01


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown noise kind"):
        noise.direction(1, 10, "v3")
    with pytest.raises(ValueError, match="unknown noise kind"):
        noise.check_kind("gauss")
