"""Oracle SCREEN of the default job's estimator structure (issue 16): shared vs per-client directions, conv2 size.

Not forward-only and not a result: each client's exact minibatch gradient (autograd) is projected on its
directions, g_c = 1/K sum_k (eps_k . grad_c) eps_k, which is the sigma -> 0 limit of the forward-difference
estimate, so a 3,000-round screen costs about as much as one backprop run. Everything else follows the default job
as it was until 2026-12-03: lenet_small on 14x14 MNIST, 10 IID clients, batch 8, K=20, Adam lr 0.01 betas (0.9, 0.99),
weight decay 5e-4, inf-norm clip 0.3, 20 warmup rounds, cosine decay, EMA 0.98, 2,000 test images.

    python experiments/oracle_directions.py mode=shared            # baffle: every client the round's K directions
    python experiments/oracle_directions.py mode=client            # the paper's code: each client its own K
    python experiments/oracle_directions.py mode=exact             # FedSGD with the exact mean gradient
    python experiments/oracle_directions.py k2=3 seed=1            # conv2 3x3 instead of 5x5 (2,826 parameters)
    python experiments/oracle_directions.py "ch=(6,12)"             # narrower channels (3,058 parameters)

What it showed (one seed each, docs/experiments.md "What did not win"): per-client directions do not help
although they are 10x as many, because the estimator's error scales with n * |g_c|^2 / K and a client's batch-8
gradient is dominated by minibatch noise that averaging over clients removes before projection when the
directions are shared.
"""
import ast
import math
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from baffle.data.registry import load_dataset
from baffle.models import _make_activation, _make_norm


def lenet_small(k2: int = 5, ch: tuple[int, int] = (8, 16)) -> nn.Module:
    """lenet_small (14x14 input) with configurable channels and second kernel ((8, 16) and 5: baffle's)."""
    c1, c2 = ch
    return nn.Sequential(
        nn.Conv2d(1, c1, 5, padding=2), _make_norm("group", c1), _make_activation("hardswish"), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, k2, padding=k2 // 2), _make_norm("group", c2), _make_activation("hardswish"), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * 9, 10))


def run(mode: str = "shared", K: int = 20, B: int = 8, C: int = 10, rounds: int = 3000, lr: float = 0.01,
        seed: int = 0, k2: int = 5, ch: tuple[int, int] = (8, 16)) -> float:
    if mode not in ("shared", "client", "exact"):
        raise SystemExit(f"mode must be shared, client or exact, got {mode!r}")
    torch.set_num_threads(1)
    tr = load_dataset("mnist", split="train", image_size=14)
    te = load_dataset("mnist", split="test", image_size=14)
    Xte, Yte = te.x[:2000], te.y[:2000]
    torch.manual_seed(seed)
    m = lenet_small(k2, tuple(ch))
    ps = list(m.parameters())
    n = sum(p.numel() for p in ps)
    print(f"{n} parameters", flush=True)
    opt = torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.99), weight_decay=5e-4)
    ema = [p.detach().clone() for p in ps]
    rng = np.random.default_rng(seed)
    parts = np.array_split(rng.permutation(len(tr.x)), C)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    acc = float("nan")
    for r in range(rounds):
        grads = []
        for c in range(C):
            idx = torch.from_numpy(rng.choice(parts[c], B, replace=False))
            loss = F.cross_entropy(m(tr.x[idx]), tr.y[idx])
            grads.append(torch.cat([q.reshape(-1) for q in torch.autograd.grad(loss, ps)]))
        G = torch.stack(grads)
        if mode == "shared":
            E = torch.randn(K, n, generator=g)
            est = ((E @ G.mean(0)) @ E) / K
        elif mode == "client":
            E = torch.randn(C, K, n, generator=g)
            est = torch.einsum("ck,ckn->n", torch.einsum("ckn,cn->ck", E, G), E) / (K * C)
        else:
            est = G.mean(0)
        off = 0
        for p in ps:
            p.grad = est[off:off + p.numel()].view_as(p).clone()
            off += p.numel()
        torch.nn.utils.clip_grad_norm_(ps, 0.3, norm_type=math.inf)
        for grp in opt.param_groups:
            grp["lr"] = lr * 0.5 * (1 + math.cos(math.pi * r / rounds)) * min(1.0, (r + 1) / 20)
        opt.step()
        with torch.no_grad():
            for e_, p in zip(ema, ps):
                e_.mul_(0.98).add_(p, alpha=0.02)
        if (r + 1) % max(1, rounds // 6) == 0 or r + 1 == rounds:
            saved = [p.detach().clone() for p in ps]
            with torch.no_grad():
                for p, e_ in zip(ps, ema):
                    p.copy_(e_)
                acc = (m(Xte).argmax(1) == Yte).float().mean().item()
                for p, s in zip(ps, saved):
                    p.copy_(s)
            print(f"{mode} k2={k2} seed={seed} round {r + 1}: {100 * acc:.2f}% ({time.time() - t0:.0f} s)", flush=True)
    return acc


if __name__ == "__main__":
    kw = {}
    for a in sys.argv[1:]:
        k, _, v = a.partition("=")
        kw[k] = v if k == "mode" else ast.literal_eval(v)
    print("final", kw, f"{100 * run(**kw):.2f}%")
