"""What an upload reveals, measured: gradient inversion against BP, BAFFLE's K scalars and the SecAgg+ mean.

    nice -n 10 .venv/bin/python experiments/leakage.py            # fresh model: 18 min on one loaded core
    nice -n 10 .venv/bin/python experiments/leakage.py --states 300 --merge   # add the model after 300 BP steps
    .venv/bin/python experiments/leakage.py --quick --out F.json  # CI size: 1 target, 100 steps, no docs
    .venv/bin/python experiments/leakage.py --doc-only            # rewrite the docs section from the JSON

Why: BAFFLE's claim is that forward-only clients leak less because only K scalars leave the device. An
honest-but-curious server knows the global weights W, the round's seeds (so every direction eps_k) and sigma,
so from one client's K loss differences dL_k it can build the rank-K estimate
g_hat = 1/(K sigma) sum_k dL_k eps_k (``baffle.reconstruct``) -- or, better, treat the scalars as K linear
measurements of the client's gradient: dL_k ~= sigma <eps_k, g>. This script attacks, on the default task
(the default Config's ``lenet_small`` on MNIST at 14x14, initialised at ``run.seed``; optionally also after
some backprop steps), minibatches of 1, 4 and 8 training images:

* ``bp``: the FedSGD upload, the exact minibatch gradient (autograd over ``estimator.select_parameters``);
* ``baffle``: one client's K scalars, computed by baffle's own client path (the default engine and noise
  kind, ``baffle.engine.make_engine``, scheme and sigma of the default recipe, seeds
  ``baffle.protocol.noise.round_seeds``). Two attackers, both reported: ``scalars`` makes the dummy
  batch's own directional derivatives E g' (E = the K directions, ``noise.directions``) match the observed
  K-vector in cosine; ``g_hat`` inverts ``baffle.reconstruct``'s estimate as if it were a gradient;
* ``secagg``: what the server sees under SecAgg+, the mean of 10 clients' K-vectors (the sum divided by the
  count); the attacker optimises 10*B dummy images against it and each target image is matched to its best
  dummy.

Attack (Geiping et al., "Inverting gradients"): dummy images from N(0, 1), Adam (lr 0.1, decayed x0.1 at 3/8,
5/8, 7/8 of the steps) on 1 - cosine(dummy statistic, observed statistic) + tv * total variation, pixels
clamped to the valid range after every step; the attacker uses autograd through the model. Labels are
recovered analytically, before the images, from the last layer's bias gradient (iDLG for batch 1: the one
negative entry; Geng et al.'s count estimate for batches: n_c = B (p_c - g_c), p = the model's mean softmax on
64 test images the attacker holds), from the exact gradient's bias entries (bp) or, from g_hat (baffle, secagg),
pooling the bias entries with the weight rows projected on those images' mean feature (``last_layer_signal``).
A separate label study (20 batches per cell, no image attack) compares that with the bias entries alone and
with no upload at all.
Quality: PSNR and SSIM (7x7 Gaussian window, sigma 1.5) in [0, 1] pixel space against the best one-to-one
match of dummies to the batch's images (Hungarian on PSNR), and the label recovery rate (multiset overlap of
the true labels with the matched dummies' labels). Floors: the dataset mean image, and B (or 10B) random
other training images matched the same way.

Writes docs/results/leakage.json and the "What an upload reveals" section of docs/robustness.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from baffle import estimator  # noqa: E402
from baffle.config import Config  # noqa: E402
from baffle.data.registry import DATASET_INFO, load_dataset  # noqa: E402
from baffle.engine import make_engine  # noqa: E402
from baffle.protocol import noise  # noqa: E402
from baffle.reconstruct import reconstruct  # noqa: E402
from baffle.records.results import write_json, write_section  # noqa: E402
from baffle.records.tables import markdown_table  # noqa: E402
from baffle.sim.factory import build_model_for, load_train  # noqa: E402

OUT = ROOT / "docs" / "results" / "leakage.json"
DOC = ROOT / "docs" / "robustness.md"
BEGIN, END = "<!-- leakage:begin -->", "<!-- leakage:end -->"
N_CLIENTS = 10  # clients whose K-vectors one SecAgg+ round sums
AUX = 64  # test images the attacker holds (only to estimate the model's mean softmax for label counts)
SSIM_WINDOW, SSIM_SIGMA = 7, 1.5  # 14x14 images: the usual 11x11 window would leave a 4x4 map


@dataclass(frozen=True)
class Budget:
    """How hard the attacker works; the same for every attack so that the cells compare."""

    steps: int = 300
    lr: float = 0.1
    tv: float = 0.1


@dataclass
class Task:
    """The default recipe's model at one state, its data, and what the attacker knows about both."""

    cfg: Config
    train_x: torch.Tensor
    train_y: torch.Tensor
    model: torch.nn.Module
    params: list
    bias: slice  # the classifier's bias in the flat parameter vector (label recovery reads it)
    weight: slice  # the classifier's weight (C x F, row-major) in the flat parameter vector
    p_hat: np.ndarray  # the model's mean softmax on the attacker's AUX test images
    h_bar: np.ndarray  # the mean classifier input (feature vector) on the same images
    mean: float
    std: float
    engine: object

    @property
    def n(self) -> int:
        return estimator.num_elements(self.params)

    @property
    def box(self) -> tuple[float, float]:
        """The valid pixel range in the model's normalised input space ([0, 1] before normalisation)."""
        return (0.0 - self.mean) / self.std, (1.0 - self.mean) / self.std


def load_task(bp_steps: int) -> Task:
    """The default Config's model at ``run.seed``, after ``bp_steps`` Adam steps (batch 64, lr 1e-3) if > 0."""
    cfg = Config()
    cfg.validate()
    train, _ = load_train(cfg)
    model = build_model_for(cfg, train)
    if bp_steps:
        rng = np.random.default_rng(12345)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(bp_steps):
            idx = torch.from_numpy(rng.choice(len(train.y), 64, replace=False))
            opt.zero_grad()
            F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
            opt.step()
        model.zero_grad(set_to_none=True)
    params = estimator.select_parameters(model, cfg.model.trainable)
    names = [name for name, _ in params]
    offsets = np.cumsum([0] + [p.numel() for _, p in params])
    where = {name: slice(int(offsets[i]), int(offsets[i + 1])) for i, name in enumerate(names)}
    test = load_dataset(cfg.data.name, split="test", root=cfg.data.root or None, image_size=cfg.data.image_size or None)
    with torch.no_grad():
        p_hat = F.softmax(model(test.x[:AUX]), dim=1).mean(0).numpy().astype(np.float64)
        h_bar = model.features(test.x[:AUX]).mean(0).numpy().astype(np.float64)
    info = DATASET_INFO[cfg.data.name]
    e = cfg.estimator
    return Task(cfg, train.x, train.y, model, params, where["classifier.bias"], where["classifier.weight"], p_hat,
                h_bar, info.mean[0], info.std[0], make_engine(e.engine, e.max_memory_mb))


def flat_grad(task: Task, x: torch.Tensor, y: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """The FedSGD upload: d mean-CE / dW over the trained parameters, flattened in the protocol's layout."""
    with torch.enable_grad():
        loss = F.cross_entropy(task.model(x), y)
        grads = torch.autograd.grad(loss, [p for _, p in task.params], create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def client_scalars(task: Task, x: torch.Tensor, y: torch.Tensor, seeds: np.ndarray) -> np.ndarray:
    """One BAFFLE client's upload: the default recipe's K loss differences, by baffle's own engine."""
    e = task.cfg.estimator
    return task.engine(task.model, task.params, x, y, seeds, e.sigma, e.scheme, F.cross_entropy, noise=e.noise)


def last_layer_signal(task: Task, g: np.ndarray, exact: bool) -> np.ndarray:
    """The per-class signal s_c = mean_i (p_ic - [y_i = c]) that the last layer's gradient carries.

    Exact gradient: the bias gradient is s itself. An estimate (g_hat) is the gradient plus noise spread
    evenly over all n coordinates, which swamps the 10 bias entries; but the weight gradient's row c is
    mean_i (p_ic - [y_i = c]) h_i, with h_i the classifier input, so projecting each row on the attacker's
    mean feature h_bar and pooling it with the bias (least squares for s_c (1, h_bar) + noise) reads the
    same signal off 1 + F coordinates: s_c = (b_c + W_c . h_bar) / (1 + |h_bar|^2)."""
    g = np.asarray(g, dtype=np.float64)
    if exact:
        return g[task.bias]
    w = g[task.weight].reshape(len(task.p_hat), -1)
    return (g[task.bias] + w @ task.h_bar) / (1.0 + task.h_bar @ task.h_bar)


def recover_labels(signal: np.ndarray, count: int, p_hat: np.ndarray) -> np.ndarray:
    """Labels from the last layer's signal s_c = mean_i (p_ic - [y_i = c]) (:func:`last_layer_signal`).

    Batch 1 (iDLG): the most negative entry. Batches: n_c = count * (p_hat_c - s_c), rounded greedily
    (Geng et al.), where p_hat is the model's mean softmax on images the attacker holds."""
    if count == 1:
        return np.array([int(np.argmin(signal))])
    est = count * (p_hat - np.asarray(signal, dtype=np.float64))
    labels = []
    for _ in range(count):
        c = int(np.argmax(est))
        labels.append(c)
        est[c] -= 1.0
    return np.sort(np.array(labels))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def invert(task: Task, mismatch: Callable[[torch.Tensor], torch.Tensor], labels: np.ndarray, budget: Budget,
           seed: int) -> tuple[torch.Tensor, float]:
    """Dummy images whose gradient (under ``labels``) minimises ``mismatch`` + tv * TV (Geiping et al.)."""
    lo, hi = task.box
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((len(labels), *task.train_x.shape[1:]), generator=gen).clamp_(lo, hi).requires_grad_(True)
    y = torch.as_tensor(labels, dtype=torch.long)
    opt = torch.optim.Adam([x], lr=budget.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(budget.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)], 0.1)
    loss = torch.tensor(float("nan"))
    for _ in range(budget.steps):
        with torch.enable_grad():
            loss = mismatch(flat_grad(task, x, y, create_graph=True)) + budget.tv * total_variation(x)
            (x.grad,) = torch.autograd.grad(loss, x)
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
    return x.detach(), float(loss.detach())


def cosine_mismatch(target: torch.Tensor, project: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """1 - cos(P g', target): P = None compares gradients, P = the K directions compares K-vectors."""
    target = target.detach().float()

    def mismatch(g: torch.Tensor) -> torch.Tensor:
        return 1.0 - F.cosine_similarity(g if project is None else project @ g, target, dim=0)

    return mismatch


# ---- quality ---------------------------------------------------------------------------------------------

def psnr_matrix(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """PSNR (peak 1) of every image of ``a`` against every image of ``b``, both in [0, 1]."""
    mse = ((a.flatten(1)[:, None, :] - b.flatten(1)[None, :, :]) ** 2).mean(-1).clamp_min(1e-10)
    return (10.0 * torch.log10(1.0 / mse)).numpy().astype(np.float64)


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """SSIM of paired images (N x 1 x H x W in [0, 1]): Gaussian window, valid region, C1 = .01^2, C2 = .03^2."""
    r = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(r ** 2) / (2 * SSIM_SIGMA ** 2))
    w = (torch.outer(g, g) / g.sum() ** 2)[None, None]
    a, b = a.double(), b.double()
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    s_aa = F.conv2d(a * a, w) - mu_a ** 2
    s_bb = F.conv2d(b * b, w) - mu_b ** 2
    s_ab = F.conv2d(a * b, w) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2))
    return m.mean(dim=(1, 2, 3)).numpy()


def assignment(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost one-to-one assignment of rows to columns (rows <= columns), the Hungarian algorithm in
    O(n^2 m) (scipy is not a dependency). Returns each row's column."""
    n, m = cost.shape
    if n > m:
        raise ValueError(f"assignment needs rows <= columns, got {n} x {m}")
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p, way = np.zeros(m + 1, dtype=int), np.zeros(m + 1, dtype=int)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv, used = np.full(m + 1, np.inf), np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0, delta, j1 = p[j0], np.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = cost[i0 - 1, j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j], way[j] = cur, j0
                    if minv[j] < delta:
                        delta, j1 = minv[j], j
            for j in range(m + 1):
                if used[j]:
                    u[p[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    out = np.zeros(n, dtype=int)
    for j in range(1, m + 1):
        if p[j]:
            out[p[j] - 1] = j - 1
    return out


def score(task: Task, x: torch.Tensor, y: np.ndarray, guess: torch.Tensor, guess_y: np.ndarray) -> dict:
    """Quality of ``guess`` (>= len(x) images) against the batch: best one-to-one match by PSNR, then PSNR,
    SSIM and the label multiset overlap of the matched guesses (fraction of the batch)."""
    a = (x * task.std + task.mean).clamp(0, 1)
    b = (guess * task.std + task.mean).clamp(0, 1)
    p = psnr_matrix(a, b)
    cols = assignment(-p)
    matched = np.asarray(guess_y)[cols]
    overlap = sum(min(int((y == c).sum()), int((matched == c).sum())) for c in np.unique(y))
    return {"psnr": float(p[np.arange(len(a)), cols].mean()), "ssim": float(ssim(a, b[cols]).mean()),
            "labels": overlap / len(y)}


# ---- the grid --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    states: tuple[int, ...] = (0,)  # backprop steps before the attacked state (0 = the fresh model)
    sizes: tuple[int, ...] = (1, 4, 8)
    ks: tuple[int, ...] = (20, 100, 1000)
    targets: int = 4  # target batches per cell
    secagg_variants: tuple[str, ...] = ("scalars",)
    budget: Budget = Budget()


def draw_batches(task: Task, grid: Grid) -> tuple[dict[int, list[np.ndarray]], np.ndarray]:
    """Disjoint target batches per size, and the remaining indices (other clients, floors), seeded."""
    rng = np.random.default_rng(2024)
    need = sum(grid.sizes) * grid.targets
    perm = rng.permutation(len(task.train_y))
    out, at = {}, 0
    for b in grid.sizes:
        out[b] = [perm[at + t * b: at + (t + 1) * b] for t in range(grid.targets)]
        at += b * grid.targets
    assert at == need
    return out, perm[need:]


def attack_cell(task: Task, x: torch.Tensor, y: np.ndarray, kind: str, budget: Budget, seed: int, *,
                grad: torch.Tensor | None = None, d: np.ndarray | None = None, seeds: np.ndarray | None = None,
                count: int | None = None) -> dict:
    """One attack on one batch. kind: bp (exact gradient ``grad``) | scalars | g_hat (K-vector ``d`` at ``seeds``);
    ``count`` dummies (default len(y); 10B for SecAgg+)."""
    t0 = time.perf_counter()
    count = count or len(y)
    extra: dict = {}
    if kind == "bp":
        signal, mismatch = last_layer_signal(task, grad.numpy(), exact=True), cosine_mismatch(grad)
    else:
        e = task.cfg.estimator
        g_hat = reconstruct(d, seeds, e.sigma, task.n, noise=e.noise)
        signal = last_layer_signal(task, g_hat, exact=False)
        if kind == "g_hat":
            mismatch = cosine_mismatch(torch.from_numpy(g_hat))
        else:
            mismatch = cosine_mismatch(torch.from_numpy(d), torch.from_numpy(noise.directions(seeds, task.n, e.noise)))
        if grad is not None:
            extra["cos_g_hat_g"] = float(F.cosine_similarity(torch.from_numpy(g_hat), grad, dim=0))
    labels = recover_labels(signal, count, task.p_hat)
    guess, loss = invert(task, mismatch, labels, budget, seed)
    return {**score(task, x, y, guess, labels), "final_loss": loss, "seconds": time.perf_counter() - t0, **extra}


def floors(task: Task, x: torch.Tensor, y: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> list[dict]:
    """What needs no upload: the dataset mean image (labels: uniform guesses), and B or 10B random other
    training images with their own labels, matched like the attacks' dummies."""
    b = len(y)
    mean_img = task.train_x.mean(0, keepdim=True).expand(b, -1, -1, -1)
    rows = [{"attack": "floor", "variant": "mean_image", **score(task, x, y, mean_img, rng.integers(0, 10, b))}]
    for variant, count in (("random_images", b), ("random_images_10x", N_CLIENTS * b)):
        idx = rng.choice(pool, count, replace=False)
        rows.append({"attack": "floor", "variant": variant,
                     **score(task, x, y, task.train_x[idx], task.train_y[idx].numpy())})
    return rows


def run_grid(grid: Grid, log: Callable[[str], None] = print) -> dict:
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    rows: list[dict] = []
    labels: dict[str, list[dict]] = {}
    for state in grid.states:
        task = load_task(state)
        labels[str(state)] = label_study(task, grid)
        batches, pool = draw_batches(task, grid)
        rng = np.random.default_rng(7)
        for b in grid.sizes:
            for t, idx in enumerate(batches[b]):
                x, y = task.train_x[idx], task.train_y[idx].numpy()
                yt = torch.as_tensor(y)
                base = {"state": state, "B": b, "target": t}
                seed = 1000 * state + 100 * b + t
                for r in floors(task, x, y, pool, rng):
                    rows.append({**base, "K": None, **r})
                grad = flat_grad(task, x, yt).detach()
                rows.append({**base, "K": None, "attack": "bp", "variant": "gradient",
                             **attack_cell(task, x, y, "bp", grid.budget, seed, grad=grad)})
                log(_line(rows[-1]))
                others = [rng.choice(pool, b, replace=False) for _ in range(N_CLIENTS - 1)]
                for k in grid.ks:
                    seeds = noise.round_seeds(task.cfg.run.seed, 1 + t, k)  # round 1 + t of the run
                    d = client_scalars(task, x, yt, seeds)
                    for variant in ("scalars", "g_hat"):
                        rows.append({**base, "K": k, "attack": "baffle", "variant": variant,
                                     **attack_cell(task, x, y, variant, grid.budget, seed, grad=grad, d=d, seeds=seeds)})
                        log(_line(rows[-1]))
                    mean_d = np.mean([d] + [client_scalars(task, task.train_x[o], task.train_y[o], seeds) for o in others],
                                     axis=0).astype(np.float32)  # SecAgg+: the server learns the sum (and count)
                    for variant in grid.secagg_variants:
                        rows.append({**base, "K": k, "attack": "secagg", "variant": variant,
                                     **attack_cell(task, x, y, variant, grid.budget, seed, d=mean_d, seeds=seeds,
                                                   count=N_CLIENTS * b)})
                        log(_line(rows[-1]))
    e = Config().estimator
    return {"grid": {**asdict(grid), "budget": asdict(grid.budget)}, "n_params": task.n,
            "model": task.cfg.model.name, "data": f"{task.cfg.data.name} {task.cfg.data.image_size}x{task.cfg.data.image_size}",
            "estimator": {"sigma": e.sigma, "scheme": e.scheme, "engine": e.engine, "noise": e.noise},
            "n_clients_secagg": N_CLIENTS, "label_study": labels, "rows": rows, "summary": summarize(rows),
            "seconds": time.perf_counter() - t_start, "load_end": os.getloadavg()}


def label_study(task: Task, grid: Grid, batches: int = 20) -> list[dict]:
    """Label recovery alone (no image attack, so more batches per cell): from a BAFFLE client's K scalars,
    reading the bias entries of g_hat only vs pooling them with the weight rows (:func:`last_layer_signal`);
    ``prior_only`` is the floor, the same count rule with no signal (labels from p_hat alone)."""
    rng = np.random.default_rng(99)
    e = task.cfg.estimator
    rows = []
    for b in grid.sizes:
        for k in grid.ks:
            rates: dict[str, list[float]] = {"prior_only": [], "bias_only": [], "pooled": []}
            for i in range(batches):
                idx = rng.choice(len(task.train_y), b, replace=False)
                x, y = task.train_x[idx], task.train_y[idx]
                seeds = noise.round_seeds(task.cfg.run.seed, 100 + i, k)
                g_hat = reconstruct(client_scalars(task, x, y, seeds), seeds, e.sigma, task.n, noise=e.noise)
                yn = y.numpy()
                for method, signal in (("prior_only", np.zeros(len(task.p_hat))), ("bias_only", g_hat[task.bias]),
                                       ("pooled", last_layer_signal(task, g_hat, False))):
                    got = recover_labels(signal, b, task.p_hat)
                    rates[method].append(sum(min(int((yn == c).sum()), int((got == c).sum())) for c in np.unique(yn)) / b)
            rows += [{"B": b, "K": k, "method": m, "labels": float(np.mean(v)), "batches": batches} for m, v in rates.items()]
    return rows


def _line(r: dict) -> str:
    return (f"state={r['state']} B={r['B']} t={r['target']} {r['attack']}/{r['variant']} K={r['K']}: "
            f"PSNR {r['psnr']:.2f} SSIM {r['ssim']:.3f} labels {r['labels']:.2f} ({r['seconds']:.1f}s)")


def summarize(rows: list[dict]) -> list[dict]:
    """Mean (and std) over target batches of every (state, attack, variant, B, K) cell."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["state"], r["attack"], r["variant"], r["B"], r["K"]), []).append(r)
    out = []
    for (state, attack, variant, b, k), rs in cells.items():
        row = {"state": state, "attack": attack, "variant": variant, "B": b, "K": k, "targets": len(rs)}
        for m in ("psnr", "ssim", "labels"):
            v = np.array([r[m] for r in rs])
            row[m], row[m + "_std"] = float(v.mean()), float(v.std())
        if "cos_g_hat_g" in rs[0]:
            row["cos_g_hat_g"] = float(np.mean([r["cos_g_hat_g"] for r in rs]))
        out.append(row)
    return out


# ---- the page --------------------------------------------------------------------------------------------

ROWS = [  # (attack, variant, label); K is filled in per row below
    ("floor", "mean_image", "floor: the dataset's mean image (labels: uniform guesses)"),
    ("floor", "random_images", "floor: B random other training images (their labels)"),
    ("floor", "random_images_10x", "floor: 10B random other training images, best B matched (SecAgg+'s floor)"),
    ("bp", "gradient", "BP client, FedSGD gradient"),
    ("baffle", "scalars", "BAFFLE client's K scalars, matched as K-vectors"),
    ("baffle", "g_hat", "BAFFLE client's g_hat inverted as a gradient"),
    ("secagg", "scalars", "SecAgg+ mean of 10 clients' K-vectors, 10B dummies"),
    ("secagg", "g_hat", "SecAgg+ mean's g_hat inverted as a gradient, 10B dummies"),
]


def table(res: dict, state: int) -> str:
    cells = {(r["attack"], r["variant"], r["B"], r["K"]): r for r in res["summary"] if r["state"] == state}
    sizes, ks = res["grid"]["sizes"], res["grid"]["ks"]
    rows = []
    for attack, variant, label in ROWS:
        for k in (ks if attack in ("baffle", "secagg") else [None]):
            if (attack, variant, sizes[0], k) not in cells:
                continue
            out = [label, "-" if k is None else k]
            for b in sizes:
                c = cells[(attack, variant, b, k)]
                out.append(f"{c['psnr']:.1f} / {c['ssim']:.2f} / {100 * c['labels']:.0f}%")
            rows.append(out)
    return markdown_table(["what the attacker inverts", "K", *[f"batch {b}: PSNR / SSIM / labels" for b in sizes]], rows,
                          [None, "right", *["right"] * len(sizes)])


def section(res: dict) -> str:
    g, b = res["grid"], res["grid"]["budget"]
    cos = {r["K"]: r["cos_g_hat_g"] for r in res["summary"] if r["attack"] == "baffle" and r["variant"] == "scalars"
           and r["state"] == g["states"][0] and r["B"] == g["sizes"][0]}
    parts = [
        BEGIN,
        "## What an upload reveals: gradient inversion, measured",
        "",
        "Generated by `nice -n 10 .venv/bin/python experiments/leakage.py`"
        + "".join(f" then `... --states {st} --merge`" for st in g["states"][1:])
        + " (raw numbers, per target batch: "
        f"`docs/results/leakage.json`; {res['seconds'] / 60:.0f} minutes on one thread of a shared, loaded CPU). "
        f"Default task: {res['model']} ({res['n_params']:,} parameters) on {res['data']}, the default estimator "
        f"(sigma = {res['estimator']['sigma']}, {res['estimator']['scheme']} differences, noise {res['estimator']['noise']}, "
        f"the {res['estimator']['engine']} engine: the K scalars are what `Client.step` would upload). "
        f"{g['targets']} disjoint target batches of training images per batch size; each cell is the mean over them of "
        "PSNR (dB, peak 1) and SSIM (7x7 Gaussian window) of the best one-to-one match of reconstructions to the "
        "batch's images, and the fraction of the batch's labels recovered (multiset overlap with the matched "
        "reconstructions' labels).",
        "",
        f"Attack (Geiping et al., \"Inverting gradients\"; the attacker uses autograd): dummy images, Adam "
        f"({b['steps']} steps, lr {b['lr']}, decayed x0.1 at 3/8, 5/8, 7/8), loss 1 - cosine(dummy statistic, observed "
        f"statistic) + {b['tv']} x total variation, pixels clamped to [0, 1]. Labels are recovered first, analytically, "
        "from the last layer (iDLG for batch 1, Geng et al.'s counts for batches): from the BP gradient's bias entries; "
        "from g_hat by pooling the bias entries with the weight rows projected on the mean feature vector of 64 test "
        "images the attacker holds (`last_layer_signal` in the script; the label table below compares it with the "
        "bias entries alone). "
        "The honest-but-curious BAFFLE server knows W, the round's seeds and sigma, so it knows every direction "
        "eps_k: it either makes the dummy batch's directional derivatives (eps_k . grad L(dummy), all k) match "
        "the uploaded K-vector (\"matched as K-vectors\"), or inverts g_hat = 1/(K sigma) sum_k dL_k eps_k "
        "(`baffle.reconstruct`) as if it were a gradient. Under SecAgg+ the server learns only the sum (and "
        f"count) of {res['n_clients_secagg']} clients' K-vectors; the attacker fits {res['n_clients_secagg']}B "
        "dummies to their mean and each target image is scored against its best-matching dummy, so the floor "
        "for that row is 10B random real images matched the same way.",
        "",
    ]
    for state in g["states"]:
        parts += [f"### {'Fresh model (initialised at run.seed)' if state == 0 else f'After {state} backprop steps'}", "",
                  table(res, state), ""]
    parts += label_table(res)
    parts += [
        "cos(g_hat, true gradient) at batch 1: " + ", ".join(f"K = {k}: {c:.2f}" for k, c in sorted(cos.items()))
        + f" (about sqrt(K / n) for n = {res['n_params']:,}).",
        "",
        *interpretation(res),
        END,
    ]
    return "\n".join(parts)


def label_table(res: dict) -> list[str]:
    """Label recovery alone from one BAFFLE client's K scalars, per state: bias entries only vs pooled."""
    out = []
    for state, rows in sorted(res.get("label_study", {}).items(), key=lambda kv: int(kv[0])):
        by = {(r["B"], r["K"], r["method"]): r for r in rows}
        sizes, ks = sorted({r["B"] for r in rows}), sorted({r["K"] for r in rows})
        table_rows = [[b, f"{100 * by[(b, ks[0], 'prior_only')]['labels']:.0f}%",
                       *[f"{100 * by[(b, k, 'bias_only')]['labels']:.0f}% / {100 * by[(b, k, 'pooled')]['labels']:.0f}%"
                         for k in ks]] for b in sizes]
        where = "the fresh model" if state == "0" else f"the model after {state} backprop steps"
        out += [f"Labels alone from one BAFFLE client's K scalars ({where}, {rows[0]['batches']} random batches per cell; "
                "g_hat's bias entries only / pooled with the weight rows; the floor guesses from the model's mean "
                "prediction alone):", "",
                markdown_table(["batch", "floor (no upload)", *[f"K = {k}" for k in ks]], table_rows, "right"), ""]
    return out


def interpretation(res: dict) -> list[str]:
    """The reading of the table, its numbers filled in from the summary (fresh model, the grid's own B and K).

    The sentences were written after the first full run (3a1e815's grid); they quote the JSON, so a rerun
    with other seeds changes the numbers, and whoever reruns checks that the sentences still hold."""
    g = res["grid"]
    s0, sizes, ks = g["states"][0], g["sizes"], g["ks"]
    c = {(r["attack"], r["variant"], r["B"], r["K"]): r for r in res["summary"] if r["state"] == s0}
    lab = {(r["B"], r["K"], r["method"]): r["labels"] for r in res.get("label_study", {}).get(str(s0), [])}
    b1, bn, k_lo, k_mid, k_hi = sizes[0], sizes[-1], ks[0], ks[len(ks) // 2], ks[-1]

    def q(attack: str, variant: str, b: int, k: int | None, m: str = "ssim") -> str:
        r = c.get((attack, variant, b, k))
        return "n/a" if r is None else f"{r[m]:.2f}"

    def pct(b: int, k: int, method: str = "pooled") -> str:
        return f"{100 * lab[(b, k, method)]:.0f}%" if (b, k, method) in lab else "n/a"

    sec = [r for r in res["summary"] if r["attack"] == "secagg"]  # every state
    floor10 = [r["ssim"] for r in res["summary"] if r["variant"] == "random_images_10x"]
    v = dict(b1=b1, bn=bn, k_lo=k_lo, k_mid=k_mid, k_hi=k_hi, mid_b=sizes[len(sizes) // 2],
             bp1=q("bp", "gradient", b1, None), bpn=q("bp", "gradient", bn, None),
             hi1=q("baffle", "scalars", b1, k_hi), hi_mid=q("baffle", "scalars", sizes[len(sizes) // 2], k_hi),
             hin=q("baffle", "scalars", bn, k_hi), randn=q("floor", "random_images", bn, None),
             mid1=q("baffle", "scalars", b1, k_mid), lo1=q("baffle", "scalars", b1, k_lo),
             mean1=q("floor", "mean_image", b1, None),
             l_lo1=pct(b1, k_lo), l_lon=pct(bn, k_lo), l_mid1=pct(b1, k_mid), l_midn=pct(bn, k_mid),
             l_prior1=pct(b1, k_lo, "prior_only"), l_priorn=pct(bn, k_lo, "prior_only"),
             l_bias_lo1=pct(b1, k_lo, "bias_only"),
             sec_max=f"{max(r['ssim'] for r in sec):.2f}" if sec else "n/a",
             floor10=f"{min(floor10):.2f}" if floor10 else "n/a")
    out = [line.format(**v) for line in INTERPRETATION]
    for state in g["states"][1:]:
        t = {(r["attack"], r["variant"], r["B"], r["K"]): r for r in res["summary"] if r["state"] == state}
        tl = {(r["B"], r["K"], r["method"]): r["labels"] for r in res.get("label_study", {}).get(str(state), [])}

        def ts(attack: str, variant: str, b: int, k: int | None) -> str:
            r = t.get((attack, variant, b, k))
            return "n/a" if r is None else f"{r['ssim']:.2f}"

        labels = ", ".join(f"{100 * tl[(b1, k, 'pooled')]:.0f}% at K = {k}" for k in ks if (b1, k, "pooled") in tl)
        bp_labels = ", ".join(f"{100 * t[('bp', 'gradient', b, None)]['labels']:.0f}%" for b in sizes[1:]
                              if ("bp", "gradient", b, None) in t)
        prior = ", ".join(f"{100 * tl[(b, k_lo, 'prior_only')]:.0f}%" for b in sizes[1:] if (b, k_lo, "prior_only") in tl)
        out[1:1] = ["", f"**After {state} backprop steps**, at batch {b1} the picture is the same: SSIM "
                    f"{ts('bp', 'gradient', b1, None)} for BP, {ts('baffle', 'scalars', b1, k_hi)} at K = {k_hi}, "
                    f"{ts('baffle', 'scalars', b1, k_mid)} at K = {k_mid}, {ts('baffle', 'scalars', b1, k_lo)} at "
                    f"K = {k_lo} (mean image: {ts('floor', 'mean_image', b1, None)}); the label from the scalars "
                    f"{labels}. At batches {', '.join(str(b) for b in sizes[1:])} this attack fails for BP too: the "
                    f"count rule needs the batch's own mean prediction, which on a trained model is far from the "
                    f"attacker's p_hat, so even the exact gradient gives {bp_labels} of the labels (no upload: {prior}), "
                    "and with wrong labels every image attack there, BP's included, stays at or below the floors. "
                    "Those rows therefore do not compare BAFFLE with BP; a label search (joint optimisation, or "
                    "trying label sets) would be needed, and was not run."]
    return out


INTERPRETATION = [
    "**Reading it (fresh model).** A K-vector is K linear measurements of the client's minibatch gradient "
    "(dL_k ~= sigma eps_k . g) and the server knows every eps_k, so what the rank-K projection hides is a matter of "
    "counting measurements against unknowns (196 pixels per 14x14 image). At K = {k_hi} and batch {b1} (about 5 "
    "measurements per pixel), matching the scalars reconstructs the image about as well as the full BP gradient "
    "does (SSIM {hi1} vs {bp1}): that one upload is as revealing as a FedSGD gradient. At K = {k_hi} the quality "
    "falls as the batch adds unknowns (batch {mid_b}: {hi_mid}, batch {bn}: {hin}, against {randn} for {bn} random "
    "training images), faster than BP's ({bpn} at batch {bn}). At K = {k_mid} and {k_lo} the attacker finds images "
    "that reproduce the scalars but resemble the client's little more than the floors do: SSIM {mid1} and {lo1} at "
    "batch {b1}, against {mean1} for the dataset's mean image, and below both floors at the larger batches. Matching "
    "the K-vector beats inverting g_hat wherever either rises above the floors: g_hat lies in the span of the K "
    "directions and its cosine with the true gradient is only about sqrt(K / n), so asking a dummy's gradient to "
    "point along it is asking for the wrong gradient, whereas matching the K-vector constrains only the K measured "
    "directions and leaves the rest free.",
    "",
    "**Labels leak even when images do not.** The last layer's gradient has a known shape (row c is "
    "mean_i (p_ic - [y_i = c]) h_i), so pooling its 1 + F coordinates per class reads the label signal that the "
    "10 bias entries alone lose in the noise: from K = {k_lo} scalars the batch-{b1} label in {l_lo1} of batches "
    "(bias entries alone: {l_bias_lo1}; no upload: {l_prior1}) and {l_lon} of a batch-{bn} label histogram (no upload: "
    "{l_priorn}); from K = {k_mid}, {l_mid1} and {l_midn}. At the default K = 20 a BAFFLE upload hides the images "
    "from this attack, not the labels.",
    "",
    "**SecAgg+.** Against the mean of 10 clients' K-vectors no cell (of any model state) beats its floor: the best "
    "SSIM is {sec_max}, "
    "while 10B random real images matched the same way reach at least {floor10}. The sum hides which images the "
    "target client holds from this attack; what it still carries is the round's pooled label histogram, over "
    "all 10 clients (not attributed to a client here).",
    "",
    "**What this does not show.** Only this attack: optimisation with a total-variation prior, 300 Adam steps, one "
    "random start, analytic labels; an attacker with a learned prior (a generative model of digits) chooses among "
    "the many images consistent with 20 or 100 scalars and may do much better, so the low-K rows bound this attack, "
    "not every attack. Only this model (lenet_small at the states above), MNIST at 14x14, and 4 target batches per "
    "cell (differences of a few hundredths of SSIM are noise). One round: a server that sees the same client's "
    "data in several rounds gets K new measurements each round (fresh seeds), so a client that reuses a small "
    "local dataset may leak like a larger K; that was not measured. No differential privacy (`privacy.mode` "
    "local or central noises the K-vector; not measured here), and the SecAgg+ rows assume the server learns "
    "nothing but the sum and the count.",
]


def merge(old: dict, new: dict) -> dict:
    """``new``'s states added to (or replacing) ``old``'s, refusing results from a different grid."""
    keep = ("sizes", "ks", "targets", "secagg_variants", "budget")
    new = json.loads(json.dumps(new))  # tuples -> lists, as in the JSON read back
    diff = [k for k in keep if old["grid"][k] != new["grid"][k]]
    if diff:
        raise SystemExit(f"--merge: the JSON's grid differs in {diff}; rerun every state instead")
    rows = [r for r in old["rows"] if r["state"] not in new["grid"]["states"]] + new["rows"]
    states = sorted({r["state"] for r in rows})
    labels = {**old.get("label_study", {}), **new["label_study"]}
    return {**new, "grid": {**new["grid"], "states": states}, "rows": rows, "summary": summarize(rows), "label_study": labels,
            "seconds": old["seconds"] + new["seconds"]}


def write_doc(res: dict) -> None:
    """Replace this script's own section of docs/robustness.md (append it the first time)."""
    write_section(DOC, BEGIN, END, section(res), title="# Robustness and privacy\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: batch 1 and 4, K = 20, one target, 100 steps; no docs")
    ap.add_argument("--states", type=int, nargs="+", help="backprop steps before each attacked state (default 0)")
    ap.add_argument("--targets", type=int, help="target batches per cell (default 4)")
    ap.add_argument("--steps", type=int, help="Adam steps per attack (default 300)")
    ap.add_argument("--out", type=Path, help=f"JSON path (default {OUT.relative_to(ROOT)}; --quick: required)")
    ap.add_argument("--merge", action="store_true",
                    help="add --states to the JSON's other states (same grid otherwise) instead of replacing it")
    ap.add_argument("--doc-only", action="store_true", help="rewrite the docs section from the JSON")
    ap.add_argument("--labels-only", action="store_true", help="(re)compute only the label study into the JSON")
    args = ap.parse_args()
    out = args.out or OUT
    if args.doc_only:
        write_doc(json.loads(out.read_text()))
        return
    if args.quick and args.out is None:
        ap.error("--quick needs --out (it must not overwrite the committed results)")
    grid = Grid(sizes=(1, 4), ks=(20,), targets=1, budget=Budget(steps=100)) if args.quick else Grid()
    grid = Grid(states=tuple(args.states or grid.states), sizes=grid.sizes, ks=grid.ks,
                targets=args.targets or grid.targets, secagg_variants=grid.secagg_variants,
                budget=Budget(steps=args.steps or grid.budget.steps))
    if args.labels_only:  # the label study of every state in the JSON, added to it
        res = json.loads(out.read_text())
        torch.set_num_threads(1)
        res["label_study"] = {str(s): label_study(load_task(s), grid) for s in res["grid"]["states"]}
        write_json(out, res)
        write_doc(res)
        return
    res = run_grid(grid, log=lambda line: print(line, flush=True))
    if args.merge and out.exists():
        write_json(out.with_name(out.stem + "_last_run.json"), res)  # kept if the merge refuses
        res = merge(json.loads(out.read_text()), res)
        out.with_name(out.stem + "_last_run.json").unlink()
    write_json(out, res)
    print(f"wrote {out} in {res['seconds']:.0f} s")
    if not args.quick:
        write_doc(res)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
