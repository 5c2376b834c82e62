"""EfficientNet-Lite0 (ImageNet) -> CIFAR-10, forward-only, next to a linear probe and the backprop twins (issue 15).
A SHORT run sized to a loaded CPU: a subset of CIFAR-10, one thread, about 3 CPU-hours in all (each part saved as it finishes).

What runs (each part is saved to the JSON as it finishes; a rerun skips the parts already there, so an
interrupted run resumes; ``--fresh`` starts over):

1. ``resolution``: the input side. CIFAR's 32x32 images are upsampled (bilinear) inside the model; FLOPs grow
   with the square of the side. For each side, a linear probe on the pooled pretrained features of a small
   subset (``--sweep-train`` / ``--sweep-test``), the forward FLOPs and the measured images per second.
2. ``features``: at the chosen side (``--resolution``), the frozen bottom of the network is evaluated ONCE for
   every image of the training and test subsets (``--train``, default 5,000 of 50,000, i.e. 500 per client for
   10 IID clients; ``--test``, default 2,000 of 10,000), at each cut point a subset needs (the pooled features
   for the head, the top conv's output for the top BN, the top conv's input for the top conv): prefix caching
   at its extreme, as experiments/finetune_text.py does for MiniLM. The simulator (``baffle.sim``) then runs
   unchanged on those states with :meth:`EfficientNetLite.tail` (the same modules and parameter names), and
   the script checks the tail's logits against the full model's on real images. No data augmentation (the
   cached states are of the plain images), for every method alike.
3. ``linear_probe``: the head trained centrally by backprop on all training features (full-batch Adam).
4. ``runs``: for each trained subset, ``run.method=baffle`` (forward-only: K scalar loss differences per client
   per round) and ``run.method=fedsgd`` (its backprop twin: the true gradient of the same subset on the same
   minibatches), 10 IID clients, all answering every round, same rounds, batch size and server optimizer.
5. ``prefix_cache``: what the per-minibatch prefix cache (:mod:`baffle.prefix`) saves a real client that sees
   new (augmented) minibatches: one client step (K+1 forwards of the full model on a 32-image minibatch) with
   and without it; loss differences must be bit-identical.
6. ``lr_sensitivity``: the head at other server rates, read on the test set (how much tuning moves each method);
   ``lr_validation``: each method's rate chosen on a held-out 20% of the training subset (trained on the other
   80%), then only the chosen run scored on the test subset: the honest tuned gap. ``client_kinds``: the
   forward-only head with torch, ONNX Runtime float and int8 clients.

Usage: python experiments/finetune_vision.py [--quick] [--fresh]
Writes experiments/results/finetune_vision.json and docs/finetune-vision.md (``--out DIR``: both there; ``--quick``
without ``--out``: a temporary folder, never the committed files).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import baffle.sim.factory as factory
from baffle.client import load_weights
from baffle.config import Config
from baffle.data.cache import cache_dir
from baffle.data.dataset import Dataset
from baffle.data.registry import load_dataset
from baffle.engine.loop import loss_differences
from baffle.estimator import select_parameters
from baffle.models import count_flops
from baffle.records.results import results_dir, write_json, write_text
from baffle.records.tables import markdown_table, percent
from baffle.sim.evaluate import evaluate as evaluate_on
from baffle.sim.loop import Simulation
from baffle.vision.pretrained import build_vision_model

ROOT = Path(__file__).resolve().parents[1]
#: a run whose test accuracy rose this much over the second half of its rounds was cut short (not converged)
STILL_IMPROVING = 0.01
PROBE_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)
PROBE_VERSION = 2  # 2: random sweep sample, weight decay chosen on a validation split
#: trained subset -> (cut point the cached states enter, model.trainable globs)
SUBSETS = {
    "head": ("classifier", ["classifier.*"]),
    "top BN + head": ("top.bn", ["classifier.*", "top.bn.*"]),
    "top conv + head": ("top", ["classifier.*", "top.*"]),
}


#: the head's configurations tried on the validation split (issue 15's honest tuned gap): the forward-only head at
#: its default K over the same rates as backprop, and at 3x the directions over the lower rates (where K=100 did
#: best); each lowest rate was added after the grid before it chose its lowest one (both methods, then backprop)
VALIDATION_GRID = ("baffle=0.0001,0.0003,0.001,0.003,0.01,0.03;baffle:K300=0.0001,0.0003,0.001,0.003;"
                   "fedsgd=0.00001,0.00003,0.0001,0.0003,0.001,0.003,0.01,0.03")


#: the forward-only head trained by each client runtime (issue 15 item 5: inference-only clients on a real network)
#: (every run here is without augmentation; data.augment=none says so to the config check ONNX clients need)
CLIENT_KINDS: dict[str, tuple[str, ...]] = {
    "torch float": ("data.augment=none",),
    "ONNX Runtime float": ("data.augment=none", "federation.onnx_clients=1.0"),
    "ONNX Runtime int8": ("data.augment=none", "federation.onnx_clients=1.0", "federation.onnx_precision=int8"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--data", default="cifar10_jpeg")
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--resolutions", default="32,64,96")
    ap.add_argument("--sweep-train", type=int, default=1000)
    ap.add_argument("--sweep-test", type=int, default=500)
    ap.add_argument("--rounds", default="head=20000,top BN + head=400,top conv + head=100")
    ap.add_argument("--K", default="head=100,top BN + head=100,top conv + head=20",
                    help="directions per round, per subset (a head round costs about the same at K=20 or 100: overhead dominates)")
    ap.add_argument("--cache-K", type=int, default=20, help="K of the prefix-cache step measurement")
    ap.add_argument("--sigma", type=float, default=1e-2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--noise", default="v2-gauss", help="estimator.noise (v2-gauss: ~8x faster to generate than v1 here)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (CI): small subsets, few rounds")
    ap.add_argument("--fresh", action="store_true", help="ignore saved parts and start over")
    ap.add_argument("--parts", default="resolution,features,runs,prefix_cache,lr_sensitivity,lr_validation,client_kinds",
                    help="which parts to run (the rest are kept as saved; 'none' rewrites the page from the JSON)")
    ap.add_argument("--kinds-rounds", type=int, default=2000,
                    help="rounds of the client-kind runs (forward-only head with torch, ONNX float and ONNX int8 clients)")
    ap.add_argument("--sensitivity-lrs", default="0.003,0.03", help="server lrs of the head's sensitivity check")
    ap.add_argument("--sensitivity-methods", default="baffle,fedsgd",
                    help="methods whose head runs the sensitivity check (the gap is then also read at each one's best rate)")
    ap.add_argument("--validation-grid", default=VALIDATION_GRID,
                    help="the head's configurations tried on the validation split: 'method[:K<n>]=lr,lr;...' "
                         "(K: forward-only directions per round; without it the head's --K)")
    ap.add_argument("--validation-seeds", default="0,1,2",
                    help="run seeds: the first tries the whole grid; the others rerun each method's chosen configuration "
                         "(same data subsets, split and initial head; other client partition, minibatches and directions)")
    ap.add_argument("--out", default="", help="write the JSON and Markdown here instead of the committed places")
    args = ap.parse_args(argv)
    if args.quick:
        args.train, args.test, args.sweep_train, args.sweep_test = 100, 60, 60, 40
        args.resolutions, args.resolution, args.cache_K = "32,64", 64, 4
        args.rounds, args.K = "head=6,top BN + head=6,top conv + head=4", "head=4,top BN + head=4,top conv + head=4"
        args.kinds_rounds = 4
        args.validation_grid, args.validation_seeds = "baffle=0.003,0.03;baffle:K6=0.003;fedsgd=0.003,0.03", "0,1"
    for opt in ("rounds", "K"):
        try:
            value = {k.strip(): int(v) for k, v in (kv.split("=") for kv in getattr(args, opt).split(","))}
        except ValueError:
            ap.error(f"--{opt} wants 'subset=N,...' for the subsets {', '.join(SUBSETS)}")
        if set(value) != set(SUBSETS):
            ap.error(f"--{opt} names {sorted(value)}; the subsets are {sorted(SUBSETS)}")
        setattr(args, f"{opt}_by_subset", value)
    try:
        args.grid = parse_grid(args.validation_grid)
        args.seeds = [int(v) for v in args.validation_seeds.split(",")]
    except ValueError as e:
        ap.error(f"--validation-grid / --validation-seeds: {e}")
    return args


def parse_grid(spec: str) -> list[tuple[str, int | None, float]]:
    """'baffle:K300=0.001,0.003;fedsgd=0.001' -> [(method, K or None, lr), ...]."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        head, _, lrs = part.partition("=")
        method, _, k = head.strip().partition(":")
        if method not in ("baffle", "fedsgd") or (k and (not k.startswith("K") or method != "baffle")) or not lrs:
            raise ValueError(f"{part!r} is not 'baffle[:K<n>]=lr,...' or 'fedsgd=lr,...'")
        out += [(method, int(k[1:]) if k else None, float(lr)) for lr in lrs.split(",")]
    if not out:
        raise ValueError("an empty grid")
    return out


def setup_key(args) -> dict:
    """Every setting of the run (the page's header)."""
    keep = ("model", "data", "train", "test", "clients", "resolution", "resolutions", "sweep_train", "sweep_test",
            "cache_K", "sigma", "lr", "batch", "noise", "seed", "quick")
    return {k: getattr(args, k) for k in keep} | {"rounds": args.rounds_by_subset, "K": args.K_by_subset}


def part_key(args, part: str, subset: str = "") -> dict:
    """What one saved part depends on: a rerun reuses a part only when its key is unchanged (so changing, say,
    one subset's rounds reruns that subset's two runs and nothing else)."""
    keys = {"resolution": ("model", "data", "train", "test", "sweep_train", "sweep_test", "seed"),
            "features": ("model", "data", "train", "test", "resolution", "seed"),
            "linear_probe": ("model", "data", "train", "test", "resolution", "seed"),
            "runs": ("model", "data", "train", "test", "resolution", "seed", "clients", "sigma", "lr", "batch", "noise"),
            "prefix_cache": ("model", "data", "train", "resolution", "seed", "cache_K", "sigma", "batch", "noise")}[part]
    out = {k: getattr(args, k) for k in keys} | {"root": str(Path(args.root).resolve()) if args.root else ""}
    if part in ("resolution", "linear_probe"):  # the probe's recipe: a change reruns the parts that use it
        out["probe"] = PROBE_VERSION
    return out | ({"rounds": args.rounds_by_subset[subset], "K": args.K_by_subset[subset]} if subset else {})


def subsets(args) -> tuple[Dataset, Dataset]:
    """Seeded subsets of the training and test splits (normalised 32x32 images)."""
    root = args.root or None
    full_train, full_test = load_dataset(args.data, split="train", root=root), load_dataset(args.data, split="test", root=root)
    rng = np.random.default_rng(args.seed)
    train = full_train.subset(np.sort(rng.choice(len(full_train), min(args.train, len(full_train)), replace=False)))
    test = full_test.subset(np.sort(rng.choice(len(full_test), min(args.test, len(full_test)), replace=False)))
    return train, test


def build(args, resolution: int):
    torch.manual_seed(args.seed)  # efficientnet_tiny's random body; the pretrained model needs no seed
    model = build_vision_model(args.model, 10, resolution=resolution).eval()
    model.prefix_cache = None
    return model


def states(model, x: torch.Tensor, cuts: list[str], batch: int = 64) -> tuple[dict[str, torch.Tensor], float]:
    """The frozen bottom's states at ``cuts`` for every image of ``x``; seconds taken."""
    t0 = time.perf_counter()
    parts: dict[str, list[torch.Tensor]] = {c: [] for c in cuts}
    for i in range(0, len(x), batch):
        for c, h in model.prefix_states(x[i : i + batch], cuts).items():
            parts[c].append(h)
    return {c: torch.cat(v) for c, v in parts.items()}, time.perf_counter() - t0


def _fit_head(x: torch.Tensor, y: torch.Tensor, wd: float, steps: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], 10)
    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=wd)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(x), y).backward()
        opt.step()
    return head


def _acc(head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(x).argmax(1) == y).float().mean())


def linear_probe(train_x: torch.Tensor, train_y, test_x, test_y, steps: int = 300, seed: int = 0) -> dict:
    """A linear head trained centrally by backprop on all training features (full-batch Adam); its weight decay
    chosen on a seeded 20% validation split of the training features (never on the test set)."""
    a, b = train_x.flatten(1), test_x.flatten(1)
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(a)))
    val, fit = perm[: len(a) // 5], perm[len(a) // 5 :]
    scores = {wd: _acc(_fit_head(a[fit], train_y[fit], wd, steps, seed), a[val], train_y[val]) for wd in PROBE_WEIGHT_DECAYS}
    wd = max(scores, key=lambda k: scores[k])
    head = _fit_head(a, train_y, wd, steps, seed)
    return {"test_acc": _acc(head, b, test_y), "train_acc": _acc(head, a, train_y), "steps": steps,
            "weight_decay": wd, "validation_acc": scores}


def sweep_resolution(args, train: Dataset, test: Dataset, r: int) -> dict:
    model = build(args, r)
    rng = np.random.default_rng(args.seed + 1)  # a random sample: the subsets are ordered by class
    n, m = min(args.sweep_train, len(train)), min(args.sweep_test, len(test))
    tr, te = torch.from_numpy(rng.choice(len(train), n, replace=False)), torch.from_numpy(rng.choice(len(test), m, replace=False))
    ftr, secs = states(model, train.x[tr], ["classifier"])
    fte, _ = states(model, test.x[te], ["classifier"])
    probe = linear_probe(ftr["classifier"], train.y[tr], fte["classifier"], test.y[te], seed=args.seed)
    return {"resolution": r, "probe_test_acc": probe["test_acc"], "probe_train_acc": probe["train_acc"],
            "train_images": n, "test_images": m, "mflops_per_image": count_flops(model, (3, 32, 32)) / 1e6,
            "images_per_s": n / secs, "load_avg": os.getloadavg()[0]}


def feature_cache(args, train: Dataset, test: Dataset) -> tuple[dict, dict, dict]:
    """(train states, test states, info) at every cut point of SUBSETS, from a cache file when there is one."""
    cuts = sorted({c for c, _ in SUBSETS.values()})
    key = hashlib.sha256(json.dumps([part_key(args, "features"), cuts], sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"finetune_vision-{key}.pt"
    if path.is_file():
        z = torch.load(path, weights_only=True)
        return z["train"], z["test"], z["info"]
    model = build(args, args.resolution)
    tr, t_train = states(model, train.x, cuts)
    te, t_test = states(model, test.x, cuts)
    with torch.no_grad():  # the tails on cached states are the full model: same logits on real images
        full = model(test.x[:16])
        err = max(float((model.tail(c)(te[c][:16]) - full).abs().max()) for c in cuts)
    info = {"cuts": cuts, "seconds": t_train + t_test, "images_per_s": (len(train) + len(test)) / (t_train + t_test),
            "tail_vs_full_max_abs_logit_diff": err, "state_shapes": {c: list(tr[c].shape[1:]) for c in cuts},
            "load_avg": os.getloadavg()[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train": tr, "test": te, "info": info}, path)
    return tr, te, info


def as_dataset(ds: Dataset, x: torch.Tensor) -> Dataset:
    return Dataset(x=x.contiguous(), y=ds.y, num_classes=10, name=ds.name, classes=ds.classes)


@contextlib.contextmanager
def on_states(args, train: Dataset, test: Dataset, cut: str):
    """Point the simulator's factory at the cached states and the model's tail (restored afterwards). No
    augmentation: the states are of the plain images (a crop/flip of a cached state is not the state of a
    cropped image)."""
    saved = factory.load_data, factory.build_model_for, factory.augment_cifar

    def build_tail(cfg: Config, data: Dataset) -> torch.nn.Module:
        return build(args, args.resolution).tail(cut)

    factory.load_data, factory.build_model_for, factory.augment_cifar = (lambda cfg: (train, test)), build_tail, None
    try:
        yield
    finally:
        factory.load_data, factory.build_model_for, factory.augment_cifar = saved


def sens_name(method: str, lr: float) -> str:
    """Key of a sensitivity run: the bare rate for forward-only (the first runs' keys), method/rate otherwise."""
    return str(lr) if method == "baffle" else f"{method}/{lr}"


def sens_split(name: str) -> tuple[str, float]:
    method, _, lr = name.rpartition("/")
    return method or "baffle", float(lr)


def federated(args, method: str, subset: str, train: Dataset, test: Dataset, lr: float | None = None,
              extra: tuple[str, ...] = (), rounds: int | None = None, score_on: Dataset | None = None,
              K: int | None = None, run_seed: int | None = None) -> dict:
    """One federated run on cached states; ``test`` is what its evaluations score (the validation split when
    choosing a learning rate), ``score_on`` a held-out set that only the final weights are scored on."""
    cut, patterns = SUBSETS[subset]
    lr = args.lr if lr is None else lr
    rounds = rounds or args.rounds_by_subset[subset]
    K = K or args.K_by_subset[subset]
    run_seed = args.seed if run_seed is None else run_seed
    cfg = Config()
    cfg.apply_overrides([
        f"data.name={args.data}", f"data.root={args.root}", "data.image_size=0", f"model.name={args.model}",
        f"model.trainable={json.dumps(patterns)}", f"run.method={method}", "data.partition=iid",
        f"data.num_clients={args.clients}", f"run.rounds={rounds}", f"run.eval_every={max(1, rounds // 8)}",
        "run.threads=1", f"run.seed={run_seed}", f"estimator.K={K}", f"estimator.sigma={args.sigma}",
        "estimator.engine=batched", f"estimator.noise={args.noise}", f"federation.batch_size={args.batch}", f"optim.lr={lr}", "run.checkpoint_every=0",
        f"data.eval_train_samples={min(1000, len(train))}", "optim.betas=[0.9,0.99]", *extra,  # beta2: the default when these ran
    ])
    t0 = time.perf_counter()
    curve: list[list[float]] = []
    with on_states(args, train, test, cut):
        sim = Simulation(cfg.validate(), None, progress=False)
        evaluate = sim.evaluate

        def recording(done: int) -> dict:  # the test-accuracy curve, to tell a run still improving at its end
            row = evaluate(done)
            curve.append([done, row["test_acc"]])
            return row

        sim.evaluate = recording  # type: ignore[method-assign]
        summary = sim.run()
        held_out = {}
        if score_on is not None:  # the final weights the summary reports (EMA where there is one), scored once
            load_weights(sim.fed.eval_model, sim.fed.strategy.eval_weights())
            held_out["held_out_acc"] = evaluate_on(sim.fed.eval_model, score_on)[0]
        n_trained = sum(p.numel() for _, p in select_parameters(build(args, args.resolution).tail(cut), patterns))
    keep = ("method", "rounds", "final_test_acc", "best_test_acc", "final_test_loss", "upload_bytes_per_client_per_round",
            "total_forward_passes", "total_backward_passes")
    return {**{k: summary.get(k) for k in keep}, "subset": subset, "cut": cut, "trainable": patterns,
            "trained_parameters": n_trained, "clients": args.clients,
            "forward_passes_per_client": summary["total_forward_passes"] / args.clients,
            "backward_passes_per_client": summary["total_backward_passes"] / args.clients,
            "curve": curve, "still_improving": still_improving(curve, rounds), **held_out,
            "wall_s": time.perf_counter() - t0, "load_avg": os.getloadavg()[0]}


def validation_name(method: str, K: int | None, lr: float, seed: int, args) -> str:
    """'baffle/0.001' (the head's K, the first seed: the keys of the first runs), 'baffle/K300/0.001', '.../seed1'."""
    k = f"K{K}/" if method == "baffle" and K and K != args.K_by_subset["head"] else ""
    return f"{method}/{k}{lr:g}" + (f"/seed{seed}" if seed != args.seed else "")


def validation_key(args, method: str, K: int | None, lr: float, seed: int) -> dict:
    key = part_key(args, "runs", "head") | {"lr": lr, "split": "fit 80% / validation 20%"}
    if method == "baffle" and K and K != args.K_by_subset["head"]:
        key["K"] = K
    return key | ({"run_seed": seed} if seed != args.seed else {})


def chosen_configs(args, validated: dict) -> dict[str, tuple[int | None, float]]:
    """Each method's configuration with the best final validation accuracy at the first seed, among the grid's
    (ties: the fewer directions, then the lower rate)."""
    out: dict[str, tuple[int | None, float]] = {}
    for method in dict.fromkeys(m for m, _, _ in args.grid):
        tried = [(K, lr) for m, K, lr in args.grid if m == method]
        runs = [(validated[n]["final_test_acc"], K, lr) for K, lr in tried
                if (n := validation_name(method, K, lr, args.seeds[0], args)) in validated]
        if runs:
            best = max(acc for acc, _, _ in runs)
            _, K, lr = min((r for r in runs if r[0] == best), key=lambda r: (r[1] or args.K_by_subset["head"], r[2]))
            out[method] = (K, lr)
    return out


def fit_validation_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices: a seeded 20% of the training subset held out, the rule the linear probe uses."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n // 5 :]), np.sort(perm[: n // 5])


def half_way(curve: list[list[float]], rounds: int) -> list[float]:
    """The evaluation nearest the middle of the run (at or before it; the first one if none)."""
    before = [c for c in curve if c[0] <= rounds / 2]
    return before[-1] if before else curve[0]


def still_improving(curve: list[list[float]], rounds: int) -> bool:
    return len(curve) >= 2 and curve[-1][1] - half_way(curve, rounds)[1] >= STILL_IMPROVING


def prefix_cache_step(args, train: Dataset) -> dict:
    """One forward-only client step (K+1 forwards of the full model on one minibatch) with and without the
    per-minibatch prefix cache, for each subset; the second minibatch is timed (the first learns the cut)."""
    out = {}
    batches = [(train.x[i : i + args.batch], train.y[i : i + args.batch]) for i in (0, args.batch)]
    for subset, (cut, patterns) in SUBSETS.items():
        row = {}
        for cached in (True, False):
            model = build(args, args.resolution)
            if cached:
                from baffle.prefix import PrefixCache

                model.prefix_cache = PrefixCache()
            params = select_parameters(model, patterns)
            diffs = []
            for b, (x, y) in enumerate(batches):
                t0 = time.perf_counter()
                diffs.append(loss_differences(model, params, x, y, np.arange(1, args.cache_K + 1, dtype=np.uint64) + 100 * b, args.sigma, "forward"))
                wall = time.perf_counter() - t0
            row["cached" if cached else "plain"] = {"wall_s": wall, "diffs": diffs}
            if cached:
                c = model.prefix_cache
                row["stages_run"], row["stages_total"] = c.stages_run, c.stages_total
        full = count_flops(model, (3, 32, 32))
        stage = "top" if cut == "top.bn" else cut  # the cache works per stage: the top stage is conv + BN + pool
        tail = count_flops(model.tail(stage), tuple(model.prefix_states(train.x[:2], [stage])[stage].shape[1:]))
        out[subset] = {
            "bit_identical": all(np.array_equal(a, b) for a, b in zip(row["cached"]["diffs"], row["plain"]["diffs"])),
            "wall_s_cached": row["cached"]["wall_s"], "wall_s_plain": row["plain"]["wall_s"],
            "stages_run": row["stages_run"], "stages_total": row["stages_total"],
            "step_mflops_plain": (args.cache_K + 1) * full / 1e6 * args.batch,
            "step_mflops_cached": (full + args.cache_K * tail) / 1e6 * args.batch, "load_avg": os.getloadavg()[0],
        }
    return out


def validated_section(args, validated: dict) -> list[str]:
    """The head's configuration chosen per method on a validation split, then scored on the test subset over seeds."""
    first = {n: r for n, r in validated.items() if r.get("run_seed", args.seed) == args.seeds[0]}
    if not first:
        return []
    chosen = chosen_configs(args, validated)
    label = {"baffle": "forward-only (baffle)", "fedsgd": "backprop (fedsgd)"}

    def K_of(r: dict) -> int | None:  # runs saved before K was recorded ran at the key's (the head's) K
        return (r.get("K") or r["key"]["K"]) if r["method"] == "baffle" else None

    def config(r: dict) -> str:
        return f"K={K_of(r)}, lr {r['lr']:g}" if K_of(r) else f"lr {r['lr']:g}"

    def is_chosen(r: dict) -> bool:
        m = r["method"]
        return m in chosen and (K_of(r), r["lr"]) == ((chosen[m][0] or args.K_by_subset["head"]) if m == "baffle" else None, chosen[m][1])

    rows = [[label.get(r["method"], r["method"]), str(K_of(r) or "-"), f"{r['lr']:g}", percent(r["final_test_acc"]),
             percent(r["held_out_acc"]), "yes" if is_chosen(r) else "", f"{r['rounds']}",
             f"{r['forward_passes_per_client']:,.0f}", f"{r['wall_s']:.0f}"]
            for r in sorted(first.values(), key=lambda r: (r["method"], K_of(r) or 0, r["lr"]))]
    any_r = next(iter(first.values()))

    def se(which: str) -> str:
        n = any_r.get("validation_images" if which == "val" else "test_images")
        return f"{100 * (0.6 * 0.4 / n) ** 0.5:.1f}" if n else "?"

    lines = [f"## Head: configuration chosen on a validation split, then {len(args.seeds)} seeds", "",
             f"Each method trains the head on 80% of the training subset (a seeded split, the linear probe's rule) with each "
             f"configuration below (the server rate; for forward-only also K, the directions per round), same everything "
             f"else as the main head runs ({any_r['rounds']} rounds); the configuration with the best final accuracy on the "
             "held-out 20% (validation) is chosen (ties: fewer directions, then the lower rate), and only then is its "
             "final model scored on the test subset. The test column of the configurations not chosen is shown for "
             f"reference, not used. Run seed {args.seeds[0]}; sampling error of one accuracy: about {se('val')} points on the "
             f"{any_r.get('validation_images', '?')} validation images, {se('test')} on the {any_r.get('test_images', '?')} "
             "test images (one standard error at 60%). Wall s: one thread on the shared 2-core machine beside other runs.", "",
             markdown_table(["method", "K", "server lr", "validation acc (%)", "test acc (%)", "chosen", "rounds",
                             "fwd passes / client", "wall s"], rows,
                            ["left", "right", "left", "right", "right", "left", "right", "right", "right"]), ""]
    means = {}
    seed_rows = []
    for m, (K, lr) in chosen.items():
        runs = [validated.get(validation_name(m, K, lr, sd, args)) for sd in args.seeds]
        done = [r for r in runs if r is not None]
        accs = np.array([100 * r["held_out_acc"] for r in done])
        means[m] = (accs.mean(), accs.std(ddof=1) if len(accs) > 1 else float("nan"), len(accs))
        seed_rows.append([label.get(m, m), config(done[0]), ", ".join(f"{a:.2f}" for a in accs),
                          f"{accs.mean():.2f} ± {means[m][1]:.2f}" if len(accs) > 1 else f"{accs.mean():.2f}",
                          f"{len(accs)} of {len(args.seeds)}"])
    if seed_rows:
        lines += [f"The chosen configuration of each method at run seeds {', '.join(map(str, args.seeds))} (same data "
                  "subsets, split and initial head; other client partition, minibatches and directions), scored on the "
                  "test subset:", "",
                  markdown_table(["method", "chosen", "test acc per seed (%)", "mean ± sd (%)", "seeds run"], seed_rows,
                                 ["left", "left", "left", "right", "right"]), ""]
    same = [label.get(m, m) for m, (_, sd, n) in means.items() if n > 1 and sd == 0]
    if same:
        lines += [f"{' and '.join(same)}: every seed ends on the same test accuracy; the runs differ (their validation "
                  "curves and final losses do), but a linear head trained this long at a small rate ends at nearly the "
                  f"same weights, and the test subset's {any_r.get('test_images', '?')} images resolve accuracy only to "
                  f"{100 / any_r['test_images'] if any_r.get('test_images') else float('nan'):.2g} points.", ""]
    if {"baffle", "fedsgd"} <= set(means):
        (a, _, na), (b, _, nb) = means["baffle"], means["fedsgd"]
        gap = b - a
        lines += [f"At the configurations validation chose, mean test accuracy over {min(na, nb)} seed(s): forward-only "
                  f"{a:.2f}% vs backprop {b:.2f}%: gap {gap:+.2f} points "
                  f"({'within' if gap <= 3 else 'NOT within'} the issue's 3 points).", ""]
    return lines


def render(args, res: dict) -> str:
    """docs/finetune-vision.md from the saved results."""
    s = res["setup"]
    lines = ["# EfficientNet-Lite0 (ImageNet) -> CIFAR-10: forward-only vs backprop vs linear probe (SHORT run)", "",
             f"Generated by `python experiments/finetune_vision.py{' --quick' if args.quick else ''}` (seed {s['seed']}, one thread, "
             f"`{s['model']}`). CIFAR-10 here is the JPEG copy (`{s['data']}`); published CIFAR-10 numbers were measured on "
             "the original pixels. This is a short run on a fraction of the data sized to a shared, loaded CPU, not the "
             "issue's full experiment: read the gaps, not the absolute accuracies.", ""]
    if "resolution" in res:
        rows = [[f"{r['resolution']}x{r['resolution']}", percent(r["probe_test_acc"]), percent(r["probe_train_acc"]),
                 f"{r['mflops_per_image']:.1f}", f"{r['images_per_s']:.0f}", f"{r['load_avg']:.1f}"]
                for r in sorted(res["resolution"].values(), key=lambda r: r["resolution"])]
        any_r = next(iter(res["resolution"].values()))
        lines += ["## Input resolution", "",
                  f"A linear probe on the pooled pretrained features of {any_r['train_images']} training / {any_r['test_images']} "
                  "test images (a seeded random sample of the subsets below), at each input side (CIFAR's 32x32 upsampled bilinearly "
                  "inside the model). Images/s on one thread of a shared machine (load average alongside).", "",
                  markdown_table(["input side", "probe test acc (%)", "probe train acc (%)", "MFLOPs / image", "images / s",
                                  "load avg"], rows, ["left"] + ["right"] * 5), "", resolution_note(res["resolution"], s["resolution"]), ""]
    if "features" in res:
        f = res["features"]
        lines += ["## Setup", "",
                  f"{s['train']} training images ({s['train'] // s['clients']} per client, {s['clients']} IID clients, all "
                  f"answering every round) and {s['test']} test images, seeded subsets of CIFAR-10's 50,000 / 10,000, at "
                  f"{s['resolution']}x{s['resolution']}. The frozen bottom ran once per image ({f['seconds']:.0f} s, "
                  f"{f['images_per_s']:.0f} images/s, load average {f['load_avg']:.1f}) at the cut points "
                  f"{', '.join(f['cuts'])}; the federation then trains the network's top on those states (tail vs full "
                  f"model logits: max diff {f['tail_vs_full_max_abs_logit_diff']:.1e}). No augmentation, for every method. "
                  f"baffle: K per subset {', '.join(f'{k}: {v}' for k, v in s['K'].items())} (set with the rounds to fit the "
                  f"CPU budget), sigma={s['sigma']}, forward differences, noise {s['noise']}; fedsgd: the exact gradient of the same "
                  f"subset on the same minibatches; both: batch {s['batch']} per client, server Adam lr {s['lr']} (cosine, "
                  "warmup, EMA: the defaults).", ""]
    if "linear_probe" in res or res.get("runs"):
        rows = []
        if "linear_probe" in res:
            lp = res["linear_probe"]
            rows.append(["linear probe (central, backprop, all training features)", "head", percent(lp["test_acc"]), "n/a",
                         f"{lp['steps']} full-batch steps", "n/a", "n/a"])
        for subset in SUBSETS:
            pair = {m: res.get("runs", {}).get(f"{subset}/{m}") for m in ("baffle", "fedsgd")}
            for m, r in pair.items():
                if r is None:
                    continue
                what = "forward-only (baffle)" if m == "baffle" else "backprop (fedsgd)"
                passes = f"{r['forward_passes_per_client']:.0f} fwd" + (f" + {r['backward_passes_per_client']:.0f} bwd" if m == "fedsgd" else "")
                rows.append([what, f"{subset} ({r['trained_parameters']:,})", percent(r["final_test_acc"]), percent(r["best_test_acc"]),
                             f"{r['rounds']} rounds{', K=' + str(r['key']['K']) if m == 'baffle' else ''}, {passes} / client", f"{r['upload_bytes_per_client_per_round']:,}", f"{r['wall_s']:.0f}"])
        lines += ["## Results", "", markdown_table(
            ["method", "trained subset (parameters)", "final test acc (%)", "best (%)", "budget", "upload bytes / client / round",
             "wall s"], rows, ["left", "left"] + ["right"] * 5), "",
            "Forward passes count the tail's passes on a cached state (the frozen bottom ran once per image before "
            "the federation). Goal (issue 15): forward-only within 3 points of backprop fine-tuning of the same subset.", ""]
        gaps = []
        for subset in SUBSETS:
            a, b = res.get("runs", {}).get(f"{subset}/baffle"), res.get("runs", {}).get(f"{subset}/fedsgd")
            if a and b:
                gap = 100 * (b["final_test_acc"] - a["final_test_acc"])
                gaps.append(f"- {subset}: forward-only {percent(a['final_test_acc'])}% vs backprop {percent(b['final_test_acc'])}%: "
                            f"gap {gap:+.1f} points ({'met' if gap <= 3 else 'NOT met'}).")
        lines += gaps + ([""] if gaps else [])
        ratios = [f"{subset} n/K = {r['trained_parameters'] / r['key']['K']:,.0f}" for subset in SUBSETS
                  if (r := res.get("runs", {}).get(f"{subset}/baffle"))]
        if ratios:
            lines += ["Why forward-only trails here: its gradient estimate's error grows like sqrt(n/K) with the n trained "
                      f"parameters and K directions per round ({'; '.join(ratios)}), so reaching backprop's accuracy "
                      "takes on the order of n/K times more rounds than backprop needs; a 10-class head on 1280 "
                      "features is already 12,810 parameters (MiniLM's 2-class head in experiments/finetune_text.py: 770). "
                      "The cut-short list below says which runs were still improving when their round budget ended.", ""]
    if "prefix_cache" in res:
        rows = [[k, "yes" if v["bit_identical"] else "NO", f"{v['stages_run']} / {v['stages_total']}",
                 f"{v['step_mflops_cached']:.0f} / {v['step_mflops_plain']:.0f}", f"{v['wall_s_cached']:.2f}", f"{v['wall_s_plain']:.2f}",
                 f"{v['wall_s_plain'] / v['wall_s_cached']:.1f}x", f"{v['load_avg']:.1f}"] for k, v in res["prefix_cache"].items() if k != "key"]
        lines += ["## Prefix caching on a real client", "",
                  f"One forward-only client step on a new {s['batch']}-image minibatch (K={s['cache_K']}, K+1 forwards of the full "
                  f"model at {s['resolution']}x{s['resolution']}, loop engine, the second minibatch timed; stages counted "
                  "over both) with and without the per-minibatch prefix cache (`baffle.prefix`): what a client with "
                  "augmented minibatches, which cannot precompute states, saves. Times on a shared, loaded machine.", "",
                  markdown_table(["trained subset", "bit-identical", "stages run (cached / plain)", "step MFLOPs (cached / plain)",
                                  "step s (cached)", "step s (plain)", "speed-up", "load avg"], rows, ["left"] + ["right"] * 7), ""]
    mains = {m: res.get("runs", {}).get(f"head/{m}") for m in ("baffle", "fedsgd")}
    # only rates run at the main runs' budget: a different round count is not "same everything else"
    sens = {k: v for k, v in res.get("lr_sensitivity", {}).items()
            if (m := mains.get(sens_split(k)[0])) and v["rounds"] == m["rounds"]}
    if any(mains.values()) and len(sens) < len(res.get("lr_sensitivity", {})):
        lines += ["(Server-lr sensitivity rows measured at another round budget than the main head runs' are not shown: "
                  "rerun with `--parts lr_sensitivity` to measure them at this budget.)", ""]
    if sens:
        table = {**{sens_split(k): v for k, v in sens.items()},
                 **{(m, s["lr"]): r for m, r in mains.items() if r is not None}}
        rows = [[("forward-only (baffle)" if m == "baffle" else "backprop (fedsgd)"),
                 f"{lr:g}" + (" (main run)" if lr == s["lr"] else ""), percent(r["final_test_acc"]),
                 percent(r["best_test_acc"]), f"{r['rounds']}"] for (m, lr), r in sorted(table.items())]
        best = {m: max(((lr, r) for (mm, lr), r in table.items() if mm == m), key=lambda t: t[1]["final_test_acc"])
                for m in {m for m, _ in table}}
        lines += ["## Head: sensitivity to the server learning rate", "",
                  "The main runs use one server learning rate for every method (the project default; not tuned). "
                  "Head runs at other rates, same everything else, to show how much tuning moves each method and the "
                  "gap between them (read on the test set, so the tuned gap below is optimistic for both methods alike; the "
                  "next section chooses each method's rate on a validation split instead):", "",
                  markdown_table(["method", "server lr", "final test acc (%)", "best (%)", "rounds"], rows,
                                 ["left", "left", "right", "right", "right"]), ""]
        if {"baffle", "fedsgd"} <= set(best):
            (la, a), (lb, b) = best["baffle"], best["fedsgd"]
            gap = 100 * (b["final_test_acc"] - a["final_test_acc"])
            lines += [f"Each method at its best rate tried: forward-only {percent(a['final_test_acc'])}% (lr {la:g}) vs "
                      f"backprop {percent(b['final_test_acc'])}% (lr {lb:g}): gap {gap:+.1f} points "
                      f"({'within' if gap <= 3 else 'NOT within'} the issue's 3 points).", ""]
    lines += validated_section(args, res.get("lr_validation", {}))
    kinds = {k: v for k, v in res.get("client_kinds", {}).items() if k in CLIENT_KINDS}
    if kinds:
        ref = kinds.get("torch float")
        rows = [[k, percent(r["final_test_acc"]), percent(r["best_test_acc"]), f"{r['rounds']}",
                 f"{100 * (r['final_test_acc'] - ref['final_test_acc']):+.2f}" if ref else "-",
                 f"{1e3 * r['wall_s'] / r['rounds']:.1f}", f"{r['load_avg']:.1f}"] for k, r in kinds.items()]
        lines += ["## Inference-only clients on the pretrained network", "",
                  f"The forward-only head (cached states, K={args.K_by_subset['head']}, sigma={args.sigma}, every other "
                  "setting as the main head run) with every client a torch client, an ONNX Runtime float client or an "
                  "ONNX Runtime int8 client (`federation.onnx_clients=1.0`, `federation.onnx_precision`; the tail is "
                  "exported once, weights fed as inputs each round). Same seeds and minibatches for every kind. "
                  "Wall ms / round covers all clients and the server, on the shared machine (load alongside). "
                  "Goal (issue 15): int8 within 2 points of float torch.", "",
                  markdown_table(["client kind", "final test acc (%)", "best (%)", "rounds", "vs torch float (points)",
                                  "wall ms / round", "load avg"], rows, ["left"] + ["right"] * 6), ""]
    short = [f"- {k}: {r['rounds']} rounds; test accuracy rose {100 * (r['curve'][-1][1] - half_way(r['curve'], r['rounds'])[1]):.1f} "
             f"points from round {half_way(r['curve'], r['rounds'])[0]} to the end, so it was still improving when the budget stopped it."
             for k, r in res.get("runs", {}).items() if still_improving(r["curve"], r["rounds"])]
    if short:
        lines += ["## Cut short", "", "Runs whose rounds were set by the CPU budget rather than by convergence:", "", *short, ""]
    return "\n".join(lines)


def resolution_note(sweep: dict, chosen: int) -> str:
    """The measured trade-off between neighbouring sides, and the choice."""
    rs = sorted(sweep.values(), key=lambda r: r["resolution"])
    steps = [f"{a['resolution']} -> {b['resolution']}: {100 * (b['probe_test_acc'] - a['probe_test_acc']):+.1f} points for "
             f"{b['mflops_per_image'] / a['mflops_per_image']:.2f}x the FLOPs" for a, b in zip(rs, rs[1:])]
    return (f"Measured steps: {'; '.join(steps)} (probe differences of a couple of points are within the noise of "
            f"{rs[0]['test_images']} test images). Chosen for this run: {chosen}x{chosen} "
            "(`baffle.vision.pretrained.RESOLUTION`, the side the model upsamples smaller inputs to). Every forward's "
            "FLOPs grow with the square of the side and a forward-only client runs K+1 forwards per step, so the side "
            "is a compute/accuracy trade-off: native 32x32 leaves the pretrained features far behind, and a larger side "
            "buys probe accuracy at the FLOP ratios above, which this CPU budget could not pay for every run (the "
            "forward-only vs backprop comparison below is at the same side for both). With more compute, run at a "
            "larger side: `data.image_size=96` gives the model 96x96 inputs; re-measure with `--resolutions`.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.quick and not args.out:  # a smoke run never overwrites the committed results
        args.out = str(Path(tempfile.gettempdir()) / "baffle-finetune-vision-quick")
        print(f"--quick: writing to {args.out}")
    out_dir = Path(args.out) if args.out else None
    json_path = (out_dir or results_dir(__file__)) / "finetune_vision.json"
    md_path = (out_dir / "finetune-vision.md") if out_dir else ROOT / "docs" / "finetune-vision.md"
    res: dict = json.loads(json_path.read_text()) if json_path.is_file() and not args.fresh else {}
    res["setup"] = setup_key(args)

    def save(part: str) -> None:
        write_json(json_path, res)
        write_text(md_path, render(args, res))
        print(f"[finetune_vision] {part} done", flush=True)

    def fresh(section: dict, name: str, key: dict) -> bool:
        """Whether part ``name`` of ``section`` must be (re)computed."""
        return section.get(name, {}).get("key") != key

    train, test = subsets(args)
    wanted = [str(int(v)) for v in args.resolutions.split(",")]
    res["resolution"] = {r: v for r, v in res.get("resolution", {}).items() if r in wanted}
    parts = set(args.parts.split(","))
    for r in wanted if "resolution" in parts else []:
        if fresh(res["resolution"], r, part_key(args, "resolution")):
            res["resolution"][r] = {**sweep_resolution(args, train, test, int(r)), "key": part_key(args, "resolution")}
            save(f"resolution {r}")
    if parts & {"features", "runs", "lr_sensitivity", "lr_validation", "client_kinds"}:
        tr, te, info = feature_cache(args, train, test)
        res["features"] = info
    if "features" in parts and fresh(res, "linear_probe", part_key(args, "linear_probe")):
        res["linear_probe"] = {**linear_probe(tr["classifier"], train.y, te["classifier"], test.y, seed=args.seed),
                               "key": part_key(args, "linear_probe")}
        save("linear probe")
    runs = res.setdefault("runs", {})
    for name in [k for k in runs if k.split("/")[0] not in SUBSETS]:
        del runs[name]
    for subset, (cut, _) in SUBSETS.items() if "runs" in parts else []:
        for method in ("baffle", "fedsgd"):
            name, key = f"{subset}/{method}", part_key(args, "runs", subset)
            if fresh(runs, name, key):
                runs[name] = {**federated(args, method, subset, as_dataset(train, tr[cut]), as_dataset(test, te[cut])), "key": key}
                save(name)
    if "prefix_cache" in parts and fresh(res, "prefix_cache", part_key(args, "prefix_cache")):
        res["prefix_cache"] = {**prefix_cache_step(args, train), "key": part_key(args, "prefix_cache")}
        save("prefix cache")
    sens = res.setdefault("lr_sensitivity", {})
    for method in args.sensitivity_methods.split(",") if "lr_sensitivity" in parts else []:
        for lr in [float(v) for v in args.sensitivity_lrs.split(",")]:
            key = part_key(args, "runs", "head") | {"lr": lr}
            name = sens_name(method, lr)
            if fresh(sens, name, key):
                cut = SUBSETS["head"][0]
                sens[name] = {**federated(args, method, "head", as_dataset(train, tr[cut]), as_dataset(test, te[cut]), lr=lr),
                              "key": key}
                save(f"lr sensitivity {name}")
    validated = res.setdefault("lr_validation", {})
    if "lr_validation" in parts:
        cut = SUBSETS["head"][0]
        fit, val = fit_validation_split(len(train), args.seed)
        fit_ds, val_ds = as_dataset(train.subset(fit), tr[cut][fit]), as_dataset(train.subset(val), tr[cut][val])

        def validate(method: str, K: int | None, lr: float, seed: int) -> None:
            name, key = validation_name(method, K, lr, seed, args), validation_key(args, method, K, lr, seed)
            if fresh(validated, name, key):
                run = federated(args, method, "head", fit_ds, val_ds, lr=lr, score_on=as_dataset(test, te[cut]),
                                K=K if method == "baffle" else None, run_seed=seed)
                validated[name] = {**run, "lr": lr, "K": (K or args.K_by_subset["head"]) if method == "baffle" else None,
                                   "run_seed": seed, "key": key, "fit_images": len(fit), "validation_images": len(val),
                                   "test_images": len(test)}
                save(f"lr validation {name}")

        for method, K, lr in args.grid:  # the first seed tries every configuration ...
            validate(method, K, lr, args.seeds[0])
        for method, (K, lr) in chosen_configs(args, validated).items():  # ... the others rerun each method's choice
            for seed in args.seeds[1:]:
                validate(method, K, lr, seed)
    kinds = res.setdefault("client_kinds", {})
    for kind, extra in CLIENT_KINDS.items() if "client_kinds" in parts else []:
        key = part_key(args, "runs", "head") | {"rounds": args.kinds_rounds, "extra": list(extra)}
        if fresh(kinds, kind, key):
            cut = SUBSETS["head"][0]
            kinds[kind] = {**federated(args, "baffle", "head", as_dataset(train, tr[cut]), as_dataset(test, te[cut]),
                                       extra=extra, rounds=args.kinds_rounds), "key": key}
            save(f"client kind {kind}")
    save("all")
    print(md_path.read_text())


if __name__ == "__main__":
    main()
