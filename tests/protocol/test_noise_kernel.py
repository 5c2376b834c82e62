"""The compiled v2 kernel must be the numpy reference, bit for bit, wherever it is used (clients, server)."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baffle import reconstruct
from baffle.protocol import noise, noise_kernel

KINDS = ("v2-rademacher", "v2-gauss")
M64 = (1 << 64) - 1
needs_kernel = pytest.mark.skipif(not noise_kernel.available(), reason=f"noise kernel: {noise_kernel.status()}")


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).tobytes()


@pytest.mark.skipif(os.environ.get("BAFFLE_NOISE_KERNEL") == "0", reason="kernel disabled by the environment")
def test_the_kernel_is_built_where_a_c_compiler_exists():
    # `pip install -e .` (scripts/setup.sh) builds it; a silent fallback to numpy would cost 2-4x in speed.
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler on PATH: the numpy fallback is expected")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        pytest.skip("no Python headers: the numpy fallback is expected")
    assert noise_kernel.available(), noise_kernel.status()


@needs_kernel
@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, M64),
    offset=st.one_of(st.integers(0, 300), st.integers(0, 2**62)),
    n=st.integers(0, 700),
    scale=st.one_of(st.none(), st.floats(-1e3, 1e3, width=32), st.sampled_from([0.0, -0.0, 1e-38, 1e30])),
)
def test_kernel_equals_numpy_for_any_range_and_scale(kind, seed, offset, n, scale):
    got = noise.direction(seed, n, kind, offset, scale=scale)
    ref = noise.direction(seed, n, kind, offset, scale=scale, impl="numpy")
    assert bits(got) == bits(ref)


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_equals_numpy_on_a_large_unaligned_range(kind):
    n, offset = 3 * noise.BLOCK + 77, 12_345_679
    assert bits(noise.direction(7, n, kind, offset)) == bits(noise.direction(7, n, kind, offset, impl="numpy"))


@needs_kernel
@pytest.mark.parametrize("kind", KINDS)
def test_reconstruction_with_the_kernel_equals_the_numpy_accumulation(kind, monkeypatch):
    rng = np.random.default_rng(3)
    seeds = rng.integers(0, 2**63, 13, dtype=np.uint64)
    d = rng.normal(size=13).astype(np.float32)
    n = noise.BLOCK + 5_001  # a full block and a ragged one, each tiled inside the kernel
    fast = reconstruct.reconstruct(d, seeds, 1e-3, n, noise=kind, threads=2)
    monkeypatch.setattr(noise_kernel, "_lib", None)
    assert not noise_kernel.available()
    slow = reconstruct.reconstruct(d, seeds, 1e-3, n, noise=kind)
    assert bits(fast) == bits(slow)


@needs_kernel
def test_kernel_refuses_a_buffer_it_cannot_write_in_place():
    a = np.zeros(20, dtype=np.float32)
    for bad in (a[::2], a.astype(np.float64), a.reshape(4, 5)):
        with pytest.raises(ValueError, match="contiguous 1-D float32"):
            noise_kernel.fill(1, 0, bad, "v2-gauss", None)
    with pytest.raises(ValueError, match="v2 kinds"):
        noise_kernel.fill(1, 0, a, "v1", None)
    strided = noise.direction(5, 10, "v2-gauss", out=np.zeros(20, dtype=np.float32)[::2].copy())  # copy: fine
    assert bits(strided) == bits(noise.direction(5, 10, "v2-gauss", impl="numpy"))


def test_without_the_kernel_baffle_says_so_and_generates_the_same_bits():
    code = ("from baffle.protocol import noise, noise_kernel; import sys; print(noise_kernel.status()); "
            "sys.stdout.write(noise.direction(99, 1000, 'v2-gauss', 3).tobytes().hex())")
    env = {**os.environ, "BAFFLE_NOISE_KERNEL": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    status, hexbits = out.split("\n", 1)
    assert status == "numpy (kernel disabled by BAFFLE_NOISE_KERNEL=0)"
    assert bytes.fromhex(hexbits) == noise.direction(99, 1000, "v2-gauss", 3).tobytes()
