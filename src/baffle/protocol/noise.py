"""Seeded directions: the only randomness that crosses the wire is a seed.

A perturbation direction eps (isotropic, unit variance per element) is a pure function of one 64-bit seed.
The server and every client regenerate it bit-identically, in any process and on any machine, so noise is
never stored or sent. This module is numpy-only (no torch) so that an inference-only client (ONNX Runtime
+ numpy) reproduces it too; ``baffle.noise_torch`` is the torch implementation of spec v2 (CPU and CUDA),
tested bit-identical to this one.

Round seeds (shared by every kind):
``numpy.random.SeedSequence([run_seed, round, *extra]).generate_state(K, uint64)`` gives the K seeds of a
round (``extra`` distinguishes e.g. a client's private local-step seeds).

Direction kinds (``estimator.noise``; the plan carries the kind so every party generates the same one):

``"v1"`` -- "baffle-noise-v1", the original and still the default:
    ``numpy.random.Generator(numpy.random.Philox(key=seed)).standard_normal(n, float32)`` (Philox-4x32-10
    keyed by the seed, then numpy's float32 ziggurat). Exact N(0, 1) samples, but about 100 M elements/s,
    defined only by numpy's code, and not seekable: element i needs every element before it.

``"v2-rademacher"`` and ``"v2-gauss"`` -- "baffle-noise-v2": integer operations on (seed, index) only, so
numpy, torch on CPU and torch on CUDA agree bit for bit, and any element range [offset, offset + n) is
generated without what precedes it (a parameter tensor, a chunk, a pruned subset). All arithmetic below
is on unsigned 64-bit integers modulo 2^64; ``>>`` is a logical shift.

* Word stream (the outputs of SplitMix64 seeded with ``seed``)::

      GAMMA = 0x9E3779B97F4A7C15
      w_j = mix64(seed + (j + 1) * GAMMA)                       for word index j = 0, 1, 2, ...
      mix64(z): z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                return z ^ (z >> 31)

  (w_0, w_1, ... is exactly the sequence of ``next()`` values of the public-domain SplitMix64 generator
  with state ``seed``, so any SplitMix64 implementation is a reference.)

* ``v2-rademacher``: element i uses bit b = i mod 64 (b = 0 is the least significant bit) of word
  j = i div 64; eps_i = +1.0 if that bit is 0 and -1.0 if it is 1. Mean 0, variance 1, E[eps^4] = 1.

* ``v2-gauss``: element i uses the 16-bit field q = i mod 4 of word j = i div 4 (q = 0: bits 0..15, ...,
  q = 3: bits 48..63). With its four 4-bit nibbles c_0..c_3 (c_k = (w_j >> (16 q + 4 k)) & 0xF),
  s_i = c_0 + c_1 + c_2 + c_3 - 30 is an integer in [-30, 30], and
  eps_i = float32(s_i) * C in IEEE float32 round-to-nearest, with C = float32(1 / sqrt(85)) whose bits are
  0x3DDE2305 (85 = 4 * (16^2 - 1) / 12, the variance of a sum of four uniform nibbles).
  The only floating-point operation is that one correctly rounded product, so every backend agrees.
  Distribution: a discrete Irwin-Hall(4) (sum of four uniform nibbles), 61 levels 0.108 apart, symmetric;
  mean 0, variance 85 C^2 = 1 + 5.6e-8, kurtosis E[eps^4] = 2.698 (a normal has 3), support
  |eps| <= 30 C = 3.254 (a normal exceeds that with probability 1.1e-3); P(|eps| > 2) = 0.0417 (normal:
  0.0455), P(|eps| > 3) = 4.6e-4 (normal: 2.7e-3). It is an approximate Gaussian: the estimator only needs
  E[eps eps^T] = I, and its variance falls slightly with the lighter tails. Why so coarse: 16 bits per
  element keep generation at a few integer operations per element (4 elements per 64-bit word), and the
  level spacing does not enter the estimator's mean or variance.

Limits: word indices are below 2^64, i.e. no practical limit on n. Two seeds s, s' give overlapping word
streams only if s' - s is a small multiple of GAMMA modulo 2^64 (probability ~ n/2^64 for random seeds).

``tests/protocol/test_noise.py`` pins test vectors of every kind (and the torch implementation against them), so any
change in numpy's normal sampler, or a slip in a reimplementation, fails before a federation diverges.
"""

from __future__ import annotations

import sys
import threading
from typing import Iterator, Sequence

import numpy as np

from baffle.config.choices import NOISE_KINDS as KINDS  # the one list of kinds (torch-free)
from baffle.protocol import noise_kernel

NOISE_SPEC = "baffle-noise-v1"

GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
GAUSS_CENTER = 30
GAUSS_SCALE = np.uint32(0x3DDE2305).view(np.float32)  # float32(1/sqrt(85))
NIBBLE_MASK = 0x0F0F0F0F0F0F0F0F
LANE_MASK = 0x00FF00FF00FF00FF

# Elements produced per inner step: big enough to amortize numpy's per-call overhead, small enough that the
# temporaries stay in the L2 cache (64 Ki float32 = 256 KiB).
BLOCK = 1 << 16
_LITTLE = sys.byteorder == "little"
_MASK64 = (1 << 64) - 1
_STEPS = np.arange(BLOCK, dtype=np.uint64) * np.uint64(GAMMA)  # k * GAMMA mod 2^64, k < BLOCK
# Byte value -> the eight +-1 entries of its bits, least significant bit first.
_SIGN_TABLE = (1.0 - 2.0 * ((np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1)).astype(np.float32)
_local = threading.local()


def _scratch(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Two uint64 work buffers of length m (<= BLOCK // 2), reused per thread.

    Why: a fresh 256 KiB array per call is an mmap plus page faults each time, which at K directions x
    n / BLOCK blocks per reconstruction cost more than the arithmetic.
    """
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = (np.empty(BLOCK // 2, dtype=np.uint64), np.empty(BLOCK // 2, dtype=np.uint64))
    return bufs[0][:m], bufs[1][:m]


def check_kind(kind: str) -> str:
    """Refuse an unknown noise kind by name (a typo must not silently change the protocol)."""
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; valid: {KINDS}")
    return kind


def round_seeds(run_seed: int, round_idx: int, num_directions: int, *extra: int) -> np.ndarray:
    """The K direction seeds of one round: shared by all clients of that round (or private with ``extra``)."""
    if num_directions < 1:
        raise ValueError(f"num_directions must be >= 1, got {num_directions}")
    entropy = [int(run_seed), int(round_idx), *[int(e) for e in extra]]
    if any(e < 0 for e in entropy):
        raise ValueError(f"seed components must be non-negative, got {entropy}")
    return np.random.SeedSequence(entropy).generate_state(num_directions, np.uint64)


def _mix64_(z: np.ndarray, tmp: np.ndarray) -> None:
    """SplitMix64's finalizer, in place on a uint64 array (numpy integer arithmetic wraps modulo 2^64)."""
    np.right_shift(z, np.uint64(30), out=tmp)
    np.bitwise_xor(z, tmp, out=z)
    np.multiply(z, np.uint64(MIX1), out=z)
    np.right_shift(z, np.uint64(27), out=tmp)
    np.bitwise_xor(z, tmp, out=z)
    np.multiply(z, np.uint64(MIX2), out=z)
    np.right_shift(z, np.uint64(31), out=tmp)
    np.bitwise_xor(z, tmp, out=z)


def _words_into(seed: int, start: int, out: np.ndarray, tmp: np.ndarray) -> None:
    """out[k] = w_{start+k} of the v2 word stream; len(out) <= BLOCK."""
    base = (int(seed) + (int(start) + 1) * GAMMA) & _MASK64
    np.add(_STEPS[: len(out)], np.uint64(base), out=out)
    _mix64_(out, tmp)


def words(seed: int | np.integer, start: int, count: int) -> np.ndarray:
    """Words w_start .. w_{start+count-1} of the v2 stream of ``seed`` (uint64): the spec's primitive."""
    out = np.empty(count, dtype=np.uint64)
    tmp = np.empty(min(count, BLOCK), dtype=np.uint64)
    for a in range(0, count, BLOCK):
        b = min(a + BLOCK, count)
        _words_into(int(seed), start + a, out[a:b], tmp[: b - a])
    return out


def _le_view(w: np.ndarray, dtype: type) -> np.ndarray:
    """The little-endian byte/half-word view the spec is written in (a no-op view on little-endian CPUs)."""
    return (w if _LITTLE else w.astype("<u8")).view(dtype)


def _rademacher_into(seed: int, offset: int, out: np.ndarray, table: np.ndarray) -> None:
    n = len(out)
    per_block = BLOCK // 64
    z, tmp = _scratch(min(per_block, n // 64 + 2))
    pos = 0
    while pos < n:
        i = offset + pos
        j0, b0 = divmod(i, 64)
        m = min(per_block, (b0 + n - pos + 63) // 64)
        _words_into(seed, j0, z[:m], tmp[:m])
        signs = np.take(table, _le_view(z[:m], np.uint8), axis=0)  # (8m, 8): 64m signs, bit order
        take = min(64 * m - b0, n - pos)
        out[pos : pos + take] = signs.reshape(-1)[b0 : b0 + take]
        pos += take


def _rademacher_aligned_into(seed: int, offset: int, out: np.ndarray, table: np.ndarray) -> None:
    """Fast path: ``offset`` and ``len(out)`` multiples of 64, signs written straight into ``out``."""
    per_block = BLOCK // 64
    z, tmp = _scratch(min(per_block, len(out) // 64))
    j0 = offset // 64
    total = len(out) // 64
    for a in range(0, total, per_block):
        m = min(per_block, total - a)
        _words_into(seed, j0 + a, z[:m], tmp[:m])
        np.take(table, _le_view(z[:m], np.uint8), axis=0, out=out[64 * a : 64 * (a + m)].reshape(-1, 8))


def _gauss_into(seed: int, offset: int, out: np.ndarray) -> None:
    n = len(out)
    per_block = BLOCK // 4
    z, tmp = _scratch(min(per_block, n // 4 + 2))
    pos = 0
    while pos < n:
        j0, q0 = divmod(offset + pos, 4)
        m = min(per_block, (q0 + n - pos + 3) // 4)
        zz, tt = z[:m], tmp[:m]
        _words_into(seed, j0, zz, tt)
        # Nibble sums, SWAR: each byte gets its two nibbles (<= 30), then the low byte of each 16-bit lane
        # gets its two bytes (<= 60; no carry crosses a byte), and the mask clears the high bytes.
        np.right_shift(zz, np.uint64(4), out=tt)
        np.bitwise_and(tt, np.uint64(NIBBLE_MASK), out=tt)
        np.bitwise_and(zz, np.uint64(NIBBLE_MASK), out=zz)
        np.add(zz, tt, out=zz)
        np.right_shift(zz, np.uint64(8), out=tt)
        np.add(zz, tt, out=zz)
        np.bitwise_and(zz, np.uint64(LANE_MASK), out=zz)
        sums = _le_view(zz, np.uint16)  # (4m,) contiguous: element 4j + q from lane q
        take = min(4 * m - q0, n - pos)
        dst = out[pos : pos + take]
        np.copyto(dst, sums[q0 : q0 + take], casting="unsafe")  # uint16 -> float32, exact
        np.subtract(dst, np.float32(GAUSS_CENTER), out=dst)  # exact: small integers
        np.multiply(dst, GAUSS_SCALE, out=dst)  # the one rounding
        pos += take


def direction(
    seed: int | np.integer,
    n: int,
    kind: str = "v1",
    offset: int = 0,
    out: np.ndarray | None = None,
    scale: float | None = None,
    *,
    impl: str = "auto",
) -> np.ndarray:
    """Elements [offset, offset + n) of the direction of ``seed``, float32 (see the module docstring).

    v2 kinds cost only the requested range. v1 is not seekable: a nonzero ``offset`` generates the prefix.
    ``out`` (float32, length n) is filled in place when given, so a caller can write into its own buffer.
    ``scale`` returns float32(scale) * eps instead (the float32 product of each element), which for
    v2-rademacher costs nothing extra: it is a sign table of +-scale. The server's reconstruction and a
    client's sigma * eps use it to save a pass over the data.
    ``impl``: "auto" generates the v2 kinds with the compiled kernel when it is built (``noise_kernel``), else
    with numpy; "numpy" forces the numpy reference (tests and benchmarks compare the two).
    """
    check_kind(kind)
    if impl not in ("auto", "numpy"):
        raise ValueError(f"impl must be 'auto' or 'numpy', got {impl!r}")
    if n < 0 or offset < 0:
        raise ValueError(f"n and offset must be non-negative, got n={n}, offset={offset}")
    seed = int(seed)
    if scale is not None and kind == "v1":
        out = direction(seed, n, kind, offset, out, impl=impl)
        return np.multiply(out, np.float32(scale), out=out)
    if kind == "v1" and offset == 0 and out is None:
        return np.random.Generator(np.random.Philox(key=seed)).standard_normal(n, dtype=np.float32)
    if out is None:
        out = np.empty(n, dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != (n,):
        raise ValueError(f"out must be float32 of shape ({n},), got {out.dtype} {out.shape}")
    if kind == "v1":
        gen = np.random.Generator(np.random.Philox(key=seed))
        out[:] = gen.standard_normal(offset + n, dtype=np.float32)[offset:]
    elif impl == "auto" and noise_kernel.available() and out.flags.c_contiguous and out.flags.writeable:
        noise_kernel.fill(seed, offset, out, kind, scale)  # the compiled one-pass kernel, bit-identical
    elif kind == "v2-rademacher":
        table = _SIGN_TABLE if scale is None else _SIGN_TABLE * np.float32(scale)  # exact: +-scale
        if offset % 64 == 0 and n % 64 == 0 and out.flags.c_contiguous:
            _rademacher_aligned_into(seed, offset, out, table)
        else:
            _rademacher_into(seed, offset, out, table)
    else:
        _gauss_into(seed, offset, out)
        if scale is not None:
            np.multiply(out, np.float32(scale), out=out)  # a second rounded product, as the kernel's
    return out


def direction_at(seed: int | np.integer, index: np.ndarray | Sequence[int], kind: str) -> np.ndarray:
    """Elements ``index`` (any int64 positions, any order) of the direction of ``seed``, float32: equal to
    ``direction(seed, n, kind)[index]`` for the v2 kinds, computed from the words those elements live in.

    Why: a client whose forward reads only some rows of a large tensor (the token embeddings a minibatch
    uses) perturbs only those rows, and pays for their elements, not the table's. v1 is not seekable.
    """
    check_kind(kind)
    if kind == "v1":
        raise ValueError("direction_at needs a seekable noise kind (v2-*); v1 is generated from its start")
    idx = np.asarray(index, dtype=np.int64)
    if idx.size and idx.min() < 0:
        raise ValueError("element indices must be non-negative")
    idx = idx.astype(np.uint64)
    shift = np.uint64(6 if kind == "v2-rademacher" else 2)
    z = (idx >> shift) + np.uint64(1)  # word index j + 1
    z *= np.uint64(GAMMA)
    z += np.uint64(int(seed) & _MASK64)
    _mix64_(z, np.empty_like(z))
    if kind == "v2-rademacher":
        bits = (z >> (idx & np.uint64(63))) & np.uint64(1)
        return (np.float32(1.0) - np.float32(2.0) * bits.astype(np.float32)).astype(np.float32)
    field = (z >> (np.uint64(16) * (idx & np.uint64(3)))) & np.uint64(0xFFFF)
    sums = sum((field >> np.uint64(4 * k)) & np.uint64(0xF) for k in range(4)).astype(np.float32)
    return (sums - np.float32(GAUSS_CENTER)) * GAUSS_SCALE


def directions(seeds: Sequence[int] | np.ndarray, n: int, kind: str = "v1") -> np.ndarray:
    """Stack of directions, shape (len(seeds), n). Used by the batched engine on a bounded chunk of seeds."""
    out = np.empty((len(seeds), n), dtype=np.float32)
    for i, s in enumerate(seeds):
        direction(s, n, kind, out=out[i])
    return out


def iter_direction_chunks(
    seeds: Sequence[int] | np.ndarray, n: int, chunk: int, kind: str = "v1"
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start, directions[start:start+chunk]) so memory stays at chunk*n floats."""
    for start in range(0, len(seeds), chunk):
        yield start, directions(seeds[start : start + chunk], n, kind)
