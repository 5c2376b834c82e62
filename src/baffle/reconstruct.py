"""Server-side reconstruction: g = 1/(K sigma) * sum_k dL_k * eps_k, eps_k regenerated from its seed.

Why its own module: this is the server's one model-sized computation, and how it is done decides the
server's memory and time at real model sizes (issue 13: at n = 22.7M, K = 32 the old chunked float64
matmul took 8.3 GiB and 42 s). Two paths, chosen by the noise kind:

* ``v1`` keeps the original arithmetic exactly (directions in chunks of ``chunk``, float64 matmul, one
  float32 rounding at the end), because its summation order is pinned by ``tests/test_pinned.py``: old
  runs must reproduce bit for bit. It holds ``chunk`` float32 directions plus their float64 promotion,
  i.e. 12 * chunk * n bytes; v1 directions cannot be generated piecewise, so this is inherent to v1.
* ``v2-*`` accumulates in float32 over blocks of ``BLOCK`` elements: for each block, every direction's
  slice is generated (spec v2 seeks to any element) and added as c_k * eps_k, c_k = float32(dL_k/(K sigma)),
  in seed order. Peak memory is the float32 output plus two blocks, about 1x the parameters (goal <= 2x),
  and the blocks stay in cache. Float32 accumulation of K terms has a relative error of a few float32
  ulps: ``benchmarks/reconstruct_speed.py`` measures max |g32 - g64| / max |g64| of 1.3e-7 to 2e-7 at K = 20
  and 3.6e-7 to 5.4e-7 at K = 100 against a float64 reference. The estimate's own statistical error is
  orders of magnitude larger (its cosine with the true gradient is ~0.06 at K = 20 on the default model),
  so Kahan or pairwise summation would buy nothing measurable and is not used.
  Blocks are independent, so ``threads > 1`` splits them over a thread pool (numpy releases the GIL)
  with an unchanged result.

``reconstruct_torch`` is the same v2 accumulation with torch ops on a device (the CUDA server path);
on CPU ``reconstruct`` is faster. ``reconstruct_on`` is what the server and a locally training client call:
g as a tensor on the run's device (``run.device``), choosing between the two.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from baffle.protocol import noise as spec
from baffle.protocol import noise_kernel

BLOCK = 1 << 16  # elements per block: 256 KiB of float32, so a block and its accumulator stay in L2


def _coefficients(loss_diffs: np.ndarray, seeds: Sequence[int] | np.ndarray, sigma: float) -> np.ndarray:
    loss_diffs = np.asarray(loss_diffs, dtype=np.float32)
    if loss_diffs.shape != (len(seeds),):
        raise ValueError(f"expected {len(seeds)} loss differences, got shape {loss_diffs.shape}")
    return loss_diffs


def _reconstruct_v1(d: np.ndarray, seeds: Sequence[int] | np.ndarray, sigma: float, n: int, chunk: int) -> np.ndarray:
    """The original float64 chunked matmul, kept verbatim so v1 results stay bit-identical."""
    g = np.zeros(n, dtype=np.float64)
    for start, eps in spec.iter_direction_chunks(seeds, n, chunk, "v1"):
        g += d[start : start + len(eps)].astype(np.float64) @ eps
    return (g / (len(seeds) * sigma)).astype(np.float32)


def _accumulate_block(coef: np.ndarray, seeds: np.ndarray, kind: str, start: int, out: np.ndarray) -> None:
    """out = sum_k coef[k] * eps_k[start : start + len(out)] in float32, in seed order (seeds: uint64)."""
    if noise_kernel.available():  # the same float32 products and sums, one pass, GIL released
        noise_kernel.accumulate(coef, seeds, kind, start, out)
        return
    eps = np.empty_like(out)
    out.fill(0.0)
    for c, s in zip(coef, seeds):
        spec.direction(s, len(out), kind, offset=start, out=eps, scale=c)  # float32(c * eps)
        np.add(out, eps, out=out)


def reconstruct(
    loss_diffs: np.ndarray | Sequence[float],
    seeds: Sequence[int] | np.ndarray,
    sigma: float,
    n: int,
    chunk: int = 32,
    *,
    noise: str = "v1",
    threads: int = 1,
) -> np.ndarray:
    """g = 1/(K sigma) sum_k dL_k eps_k as float32 (see the module docstring for the two paths).

    ``chunk`` only matters for v1 (directions held at once); ``threads`` only for v2 (blocks in parallel).
    """
    spec.check_kind(noise)
    d = _coefficients(loss_diffs, seeds, sigma)
    if noise == "v1":
        return _reconstruct_v1(d, seeds, sigma, n, chunk)
    coef = (d.astype(np.float64) / (len(seeds) * sigma)).astype(np.float32)
    seeds = np.array([int(s) for s in seeds], dtype=np.uint64)  # once, not per block
    g = np.empty(n, dtype=np.float32)
    starts = range(0, n, BLOCK)
    work = lambda a: _accumulate_block(coef, seeds, noise, a, g[a : a + BLOCK])  # noqa: E731
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, starts))
    else:
        for a in starts:
            work(a)
    return g


def reconstruct_torch(
    loss_diffs: np.ndarray | Sequence[float],
    seeds: Sequence[int] | np.ndarray,
    sigma: float,
    n: int,
    *,
    noise: str,
    device: "str | object" = "cuda",
    block: int = 1 << 22,
):
    """The v2 reconstruction with torch kernels on ``device`` (float32 tensor), for a GPU server.

    Same arithmetic as :func:`reconstruct` (c_k * eps_k added in seed order, float32), so on any device
    it agrees with the numpy result up to nothing: both use correctly rounded float32 multiply and add.
    """
    import torch

    from baffle import noise_torch

    if noise == "v1":
        raise ValueError("reconstruct_torch is for the v2 kinds; v1 reconstruction is numpy's float64 path")
    spec.check_kind(noise)
    d = _coefficients(loss_diffs, seeds, sigma)
    coef = (d.astype(np.float64) / (len(seeds) * sigma)).astype(np.float32)
    g = torch.empty(n, dtype=torch.float32, device=device)
    eps = torch.empty(min(block, n), dtype=torch.float32, device=device)
    for a in range(0, n, block):
        out = g[a : a + block]
        e = eps[: len(out)]
        out.zero_()
        for c, s in zip(coef.tolist(), seeds):
            noise_torch.direction(int(s), len(out), noise, a, out=e, impl="torch")
            out.add_(e.mul_(c))
    return g


def reconstruct_on(
    device: "str | object",
    loss_diffs: np.ndarray | Sequence[float],
    seeds: Sequence[int] | np.ndarray,
    sigma: float,
    n: int,
    *,
    noise: str,
):
    """g = 1/(K sigma) sum_k dL_k eps_k as a float32 tensor on ``device`` (the run's ``torch.device``).

    On the CPU it is :func:`reconstruct` (numpy, zero-copy into the tensor), so CPU runs are unchanged; on
    another device the v2 kinds are accumulated there by :func:`reconstruct_torch` (the same float32
    operations in the same order: bit-identical, which ``benchmarks/gpu_noise_check.py`` checks on CUDA),
    and v1, defined by numpy's generator and pinned in float64, is computed on the CPU and copied over.
    """
    import torch

    device = torch.device(device)
    if device.type == "cpu" or noise == "v1":
        # v2 blocks are independent and each element's sum keeps seed order, so the result is the same for any
        # thread count; the run's thread policy (torch's intra-op count) says how many cores are free.
        threads = torch.get_num_threads() if n >= 4 * BLOCK else 1
        return torch.from_numpy(reconstruct(loss_diffs, seeds, sigma, n, noise=noise, threads=threads)).to(device)
    return reconstruct_torch(loss_diffs, seeds, sigma, n, noise=noise, device=device)
