"""The batched engine's grouped-convolution layout, NCHW against channels-last, on this machine's core.

    .venv/bin/python benchmarks/conv_layout.py [--blocks 6] [--calls 20]

Why: ``kernels.grouped_channels_last`` picks channels-last on AVX-512 cores and NCHW elsewhere; this prints the
measurements behind that rule (docs/performance.md): (1) lenet_small's conv2 for 11 members alone, best of 30;
(2) the default job's whole fused engine call (10 clients x 8 samples, K=20) with the layout forced by
``BAFFLE_CONV_LAYOUT``, and channels-last with the convolution's output converted back to NCHW, in alternated
blocks, one thread, median and best ms per call. Prints only; the numbers are machine-dependent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def best_ms(f, reps: int = 30) -> float:
    for _ in range(5):
        f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--calls", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, load {os.getloadavg()}")
    P, B = 11, 80
    x, w = torch.randn(B, P * 8, 7, 7), torch.randn(P * 16, 8, 5, 5)
    xc, wc = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        print(f"conv2, {P} members x {B} samples: NCHW {best_ms(lambda: F.conv2d(x, w, padding=2, groups=P)):.2f} ms, "
              f"channels-last {best_ms(lambda: F.conv2d(xc, wc, padding=2, groups=P)):.2f} ms (best of 30)")

    import baffle.engine.batched.kernels as K
    import baffle.engine.batched.program as PR
    from ceiling import default_config, fused_client_call

    cfg = default_config([])
    _, _, _, call = fused_client_call(cfg)
    conv = K.conv2d

    def back_to_nchw(m, v, P, weights, cols_cache=None):
        out = conv(m, v, P, weights, cols_cache)
        return K.Value(out.t.contiguous(), out.batched)

    variants = {"nchw": ("nchw", conv), "channels_last": ("channels_last", conv),
                "channels_last, output back to NCHW": ("channels_last", back_to_nchw)}
    res: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for _ in range(a.blocks):
            for name, (layout, fn) in variants.items():
                os.environ[K.CONV_LAYOUT_ENV], PR.conv2d = layout, fn
                for _ in range(3):
                    call()
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    call()
                res[name].append(1e3 * (time.perf_counter() - t0) / a.calls)
    finally:
        PR.conv2d = conv
        os.environ.pop(K.CONV_LAYOUT_ENV, None)
    for name, ms in res.items():
        print(f"engine call, {name}: median {statistics.median(ms):.2f} ms, best {min(ms):.2f} ms ({a.blocks} blocks of {a.calls})")
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
