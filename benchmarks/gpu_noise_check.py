"""GPU checks of noise spec v2 and the v2 reconstruction: bit-identity with the numpy reference, and speed.

    .venv/bin/python benchmarks/gpu_noise_check.py [--out DIR]     (run by benchmarks/gpu_check.sh)

Why: spec v2 is integer arithmetic on (seed, index) so that a CUDA client or server generates exactly the
numpy reference's directions; CPU tests can only check the torch kernels on the CPU. This runs the same
kernels on CUDA (``baffle.noise_torch`` with ``impl="torch"``) and compares bytes with the numpy
reference for both v2 kinds at ragged offsets and sizes (block boundaries, partial words, a 22.7M tensor),
compares ``reconstruct_torch`` on CUDA with the numpy ``reconstruct`` (same float32 operations in the same
order, so equal bits are expected; the max difference is recorded either way), and times generation and
reconstruction on the device (synchronised, best of 5). Exit status 1 if any bit-identity check fails.
Writes ``gpu_noise_check.json`` into --out (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle import noise_torch  # noqa: E402
from baffle.protocol import noise  # noqa: E402
from baffle.reconstruct import reconstruct, reconstruct_torch  # noqa: E402

KINDS = ("v2-gauss", "v2-rademacher")


def timed(fn, reps: int = 5) -> float:
    best = float("inf")
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    res: dict = {"cuda": torch.cuda.is_available(), "torch": torch.__version__, "checks": [], "speed": []}
    if not torch.cuda.is_available():
        res["error"] = "no CUDA device"
        print(json.dumps(res))
        return 1
    dev = torch.device("cuda")
    res["device"] = torch.cuda.get_device_name(dev)
    ok = True
    seeds = [0, int(noise.round_seeds(1234, 7, 1)[0]), (1 << 64) - 1]
    cases = [(0, 1), (3, 70), (63, 65), (64, 128), (1, noise_torch.BLOCK + 9), (noise_torch.BLOCK - 1, 2 * noise_torch.BLOCK + 3),
             (10**12 + 5, 1000), (0, 22_700_000)]
    for kind in KINDS:
        for seed in seeds:
            for offset, n in cases:
                ref = noise.direction(seed, n, kind, offset=offset)
                got = noise_torch.direction(seed, n, kind, offset, device=dev, impl="torch").cpu().numpy()
                same = got.tobytes() == ref.tobytes()
                ok &= same
                res["checks"].append({"what": "direction", "kind": kind, "seed": str(seed), "offset": offset, "n": n, "identical": same})
        for n, K in [(300_001, 20), (22_700_000, 20)]:
            s = noise.round_seeds(3, 1, K)
            d = np.random.default_rng(0).standard_normal(K).astype(np.float32)
            ref = reconstruct(d, s, 1e-3, n, noise=kind)
            got = reconstruct_torch(d, s, 1e-3, n, noise=kind, device=dev).cpu().numpy()
            same = got.tobytes() == ref.tobytes()
            ok &= same
            res["checks"].append({"what": "reconstruct", "kind": kind, "n": n, "K": K, "identical": same,
                                  "max_abs_diff": float(np.max(np.abs(got - ref)))})
            if n == 22_700_000:
                t = timed(lambda: reconstruct_torch(d, s, 1e-3, n, noise=kind, device=dev))
                res["speed"].append({"what": "reconstruct_torch", "kind": kind, "n": n, "K": K, "seconds": t})
        out = torch.empty(22_700_000, device=dev)
        t = timed(lambda: noise_torch.direction(seeds[1], out.numel(), kind, out=out, impl="torch"))
        res["speed"].append({"what": "direction", "kind": kind, "n": out.numel(), "seconds": t, "elements_per_s": out.numel() / t})
        src = torch.empty_like(out)
        tc = timed(lambda: out.copy_(src))
        res["speed"].append({"what": "copy", "n": out.numel(), "seconds": tc, "elements_per_s": out.numel() / tc})
    res["all_identical"] = bool(ok)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_noise_check.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({"all_identical": res["all_identical"], "speed": res["speed"]}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
