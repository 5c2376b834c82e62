"""Forward-only fine-tuning of all-MiniLM-L6-v2's classification head on VADER, one client per domain, next to a
linear probe and the backprop twin (issue 15). A SHORT run: a subset of the data, one CPU thread, minutes.

What runs:

1. The VADER task (``data.name=vader``) and the pretrained MiniLM encoder (``model.name=minilm``). A seeded subset
   of the training split (``--train``, default 2,000 of 15,568 sentences) and of the test split (``--test``,
   default 1,000 of 3,891) keeps the budget at a few CPU-minutes: one MiniLM forward costs ~1 GFLOP per
   sentence, so every full-model forward of the whole task would take an hour on one loaded core.
2. Head-only training never changes the encoder, so each sentence's embedding is computed once, here, and the
   federation then runs on the embeddings (exact prefix caching at its extreme: the frozen bottom is everything
   below the head). The simulator itself (``baffle.sim``) is unchanged: only its data and model factory are
   pointed at the cached embeddings and a head with the same parameter names (``classifier.*``), and the script
   checks that head's logits against the full model's on real sentences.
3. On the same subsets: a linear probe (the head trained centrally by backprop on every training embedding: the
   usual upper reference for head-only training), ``run.method=baffle`` (forward-only, K scalar loss differences
   per client per round) and ``run.method=fedsgd`` (its backprop twin), each with the four domain clients
   (``data.partition=domain``) and with 20 Dirichlet(0.5) clients, same rounds, batch size and optimizer.

Not measured here: the LayerNorm/bias, LoRA and top-block subsets (experiments/text_subsets.toml, through the
simulator's per-minibatch prefix cache) and client memory (experiments/text_memory.py).
Usage: python experiments/finetune_text.py [--rounds 400]
Writes experiments/results/finetune_text.json and finetune_text.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import baffle.sim.factory as factory
from baffle.config import Config
from baffle.data.dataset import Dataset
from baffle.data.registry import load_dataset
from baffle.nlp.pretrained import build_text_model
from baffle.records.results import results_dir, write_json, write_text
from baffle.records.tables import markdown_table, percent
from baffle.sim.loop import Simulation

OUT = results_dir(__file__)


class Head(nn.Module):
    """MiniLM's classification head alone, on the cached (already scaled) sentence embeddings [N, 384, 1, 1]."""

    def __init__(self, hidden: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x.flatten(1))


def features(ds: Dataset, emb: torch.Tensor) -> Dataset:
    return Dataset(x=emb[:, :, None, None].contiguous(), y=ds.y, num_classes=ds.num_classes, name=ds.name,
                   classes=ds.classes, groups=ds.groups)


@contextlib.contextmanager
def on_features(train: Dataset, test: Dataset):
    """Point the simulator's factory at the cached embeddings and the head (restored afterwards)."""
    saved = factory.load_data, factory.build_model_for

    def build_head(cfg: Config, data: Dataset) -> nn.Module:
        torch.manual_seed(cfg.run.seed)
        return Head(data.x.shape[1], data.num_classes)

    factory.load_data, factory.build_model_for = (lambda cfg: (train, test)), build_head
    try:
        yield
    finally:
        factory.load_data, factory.build_model_for = saved


def linear_probe(train: Dataset, test: Dataset, steps: int, seed: int) -> dict:
    """The head trained centrally by backprop on all training embeddings (full-batch Adam, weight decay 1e-4)."""
    torch.manual_seed(seed)
    head = Head(train.x.shape[1], train.num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(train.x), train.y).backward()
        opt.step()
    with torch.no_grad():
        acc = float((head(test.x).argmax(1) == test.y).float().mean())
        train_acc = float((head(train.x).argmax(1) == train.y).float().mean())
    return {"test_acc": acc, "train_acc": train_acc, "steps": steps}


def federated(method: str, train: Dataset, test: Dataset, args, partition: str = "domain", clients: int = 4) -> dict:
    cfg = Config()
    cfg.apply_overrides([
        "data.name=vader", "model.name=minilm", 'model.trainable=["classifier.*"]', f"run.method={method}",
        f"data.partition={partition}", f"data.num_clients={clients}", "data.alpha=0.5", f"run.rounds={args.rounds}", f"run.eval_every={args.rounds // 4}",
        "run.threads=1", f"run.seed={args.seed}", f"estimator.K={args.K}", f"estimator.sigma={args.sigma}",
        f"federation.batch_size={args.batch}", f"optim.lr={args.lr}", "run.checkpoint_every=0",
        f"data.eval_train_samples={min(1000, len(train))}",
        "optim.betas=[0.9,0.99]", "estimator.noise=v1",  # baffle's defaults when these runs were made
    ])
    t0 = time.perf_counter()
    with on_features(train, test):
        summary = Simulation(cfg.validate(), None, progress=False).run()
    keep = ("method", "rounds", "final_test_acc", "best_test_acc", "final_test_loss", "upload_bytes_per_client_per_round",
            "total_forward_passes", "total_backward_passes")
    return {**{k: summary.get(k) for k in keep}, "partition": partition, "clients": clients, "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--K", type=int, default=20)
    ap.add_argument("--sigma", type=float, default=1e-2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    full_train, full_test = load_dataset("vader"), load_dataset("vader", split="test")
    rng = np.random.default_rng(args.seed)
    train = full_train.subset(np.sort(rng.choice(len(full_train), args.train, replace=False)))
    test = full_test.subset(np.sort(rng.choice(len(full_test), args.test, replace=False)))
    torch.manual_seed(args.seed)
    model = build_text_model("minilm", 2).eval()
    t0 = time.perf_counter()
    ftrain, ftest = features(train, model.head_inputs(train.x)), features(test, model.head_inputs(test.x))
    embed_s = time.perf_counter() - t0

    # the head on cached embeddings is the full model's head: same logits on real sentences
    head = Head(model.classifier.in_features, 2)
    head.classifier.load_state_dict(model.classifier.state_dict())
    with torch.inference_mode():
        cache_err = float((model(test.x[:16]) - head(ftest.x[:16])).abs().max())

    results = {
        "setup": {**vars(args), "train_sentences": len(train), "test_sentences": len(test),
                  "train_per_domain": np.bincount(train.groups.numpy(), minlength=4).tolist(),
                  "embed_s": embed_s, "head_vs_full_model_max_abs_logit_diff": cache_err, "threads": 1},
        "linear_probe": linear_probe(ftrain, ftest, steps=500, seed=args.seed),
        "baffle": federated("baffle", ftrain, ftest, args),
        "fedsgd": federated("fedsgd", ftrain, ftest, args),
        "baffle_dirichlet20": federated("baffle", ftrain, ftest, args, "dirichlet", 20),
        "fedsgd_dirichlet20": federated("fedsgd", ftrain, ftest, args, "dirichlet", 20),
    }
    write_json(OUT / "finetune_text.json", results)
    s, lp, zo, bp = results["setup"], results["linear_probe"], results["baffle"], results["fedsgd"]
    rows = [
        ["linear probe (central, backprop, all training embeddings)", percent(lp["test_acc"]), f"{lp['steps']} full-batch steps", "n/a"],
        [f"forward-only head, 4 domain clients (baffle, K={args.K})", percent(zo["final_test_acc"]),
         f"{zo['rounds']} rounds", f"{zo['upload_bytes_per_client_per_round']}"],
        ["backprop head, 4 domain clients (fedsgd)", percent(bp["final_test_acc"]), f"{bp['rounds']} rounds",
         f"{bp['upload_bytes_per_client_per_round']}"],
    ]
    for key, what in (("baffle_dirichlet20", f"forward-only head, 20 Dirichlet(0.5) clients (baffle, K={args.K})"),
                      ("fedsgd_dirichlet20", "backprop head, 20 Dirichlet(0.5) clients (fedsgd)")):
        r = results[key]
        rows.append([what, percent(r["final_test_acc"]), f"{r['rounds']} rounds", f"{r['upload_bytes_per_client_per_round']}"])
    md = "\n".join([
        "# MiniLM-L6 head on VADER: forward-only vs backprop vs linear probe (SHORT run)",
        "",
        f"Generated by `python experiments/finetune_text.py` (seed {args.seed}, one thread). Subsets: {s['train_sentences']} "
        f"training sentences (per domain movie/tweets/NYT/Amazon: {s['train_per_domain']}) and {s['test_sentences']} test "
        f"sentences of the 19,459 with |mean| >= 0.5; embeddings computed once in {s['embed_s']:.0f} s "
        f"(head vs full model logits: max diff {s['head_vs_full_model_max_abs_logit_diff']:.1e}). Test accuracy on the "
        "test subset. This is a short run on a fraction of the data, not the issue's full experiment.",
        "",
        markdown_table(["method", "test acc (%)", "budget", "upload bytes / client / round"], rows, ["left", "right", "right", "right"]),
        "",
    ])
    write_text(OUT / "finetune_text.md", md)
    print(md)


if __name__ == "__main__":
    main()
