"""MiniLM-L6 on VADER beyond the head (issue 15 item 4): the linear probe that every subset run starts from, and the
report of experiments/text_subsets.toml.

Fine-tuning after a linear probe (LP-FT) is the usual way to adapt a pretrained encoder: a randomly initialised head
would first have to be learnt through the encoder's noise. So this script

1. ``init``: loads exactly the data the sweep's runs see (``baffle.sim.factory.load_data`` with the sweep's
   ``[base]``: the seeded 2,000-sentence training subset and 1,000-sentence test subset), computes each sentence's
   pretrained embedding once, trains the head on them centrally by backprop (full-batch Adam, 500 steps: the linear
   probe), scores it on the test subset and writes the whole model with that head as
   ``results/text_subsets/probe_init.safetensors``, the ``model.init`` of every run of the sweep;
2. ``report``: reads a sweep's results and writes experiments/results/<sweep>.{json,md,png} and its section of
   docs/finetune-text.md: each subset's forward-only run next to its backprop twin and the probe. ``--sweep``
   picks the sweep: text_subsets.toml (4 domain clients, the default) or text_subsets_dirichlet.toml (20
   Dirichlet(0.5) clients, 4 per round; its report also sets each run beside the domain run of the same name).

Usage:
    python experiments/text_subsets.py init
    baffle sweep experiments/text_subsets.toml        # resumable; --only REGEX for parallel lanes
    python experiments/text_subsets.py report
    baffle sweep experiments/text_subsets_dirichlet.toml
    python experiments/text_subsets.py report --sweep experiments/text_subsets_dirichlet.toml
    python experiments/text_subsets.py init --seed 1 && python experiments/text_subsets.py init --seed 2
    baffle sweep experiments/text_subsets_seeds.toml
    python experiments/text_subsets.py report --seeds   # seeds 0, 1, 2 of the head / LoRA / lnbias pairs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from baffle.records.checkpoint import save_weights
from baffle.records.results import results_dir, write_json, write_section, write_text
from baffle.records.tables import markdown_table, percent
from baffle.sim.factory import build_model_for, load_data
from baffle.sweep import load_sweep, make_config

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "text_subsets.toml"
OUT = results_dir(__file__)
DOC = ROOT / "docs" / "finetune-text.md"


def probe_paths(seed: int) -> tuple[Path, Path]:
    """(the probe-initialised model, its record) of ``seed``: seed 0 is text_subsets.toml's ``model.init``; seeds 1
    and 2 are text_subsets_seeds.toml's (each trained on its own seed's subset)."""
    if seed == 0:
        spec = load_sweep(SWEEP, extra=["model.init="]).runs[0]  # validated without the file it names
        return ROOT / spec.overrides["model.init"], OUT / "text_subsets_probe.json"
    return ROOT / f"results/text_subsets/probe_init_seed{seed}.safetensors", OUT / f"text_subsets_probe_seed{seed}.json"


def init(steps: int = 500, seed: int = 0) -> None:
    path, record_path = probe_paths(seed)  # the files this writes: the base config without model.init
    spec = load_sweep(SWEEP, extra=["model.init="]).runs[0]
    cfg = make_config(spec, ["model.init=", "model.adapter=none", "model.trainable=[]", f"run.seed={seed}"])
    torch.set_num_threads(max(1, cfg.run.threads))
    train, test = load_data(cfg)
    model = build_model_for(cfg, train).eval()
    t0 = time.perf_counter()
    e_train, e_test = model.head_inputs(train.x), model.head_inputs(test.x)
    embed_s = time.perf_counter() - t0
    head = model.classifier
    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(e_train), train.y).backward()
        opt.step()
    with torch.no_grad():
        probe = {"test_acc": float((head(e_test).argmax(1) == test.y).float().mean()),
                 "train_acc": float((head(e_train).argmax(1) == train.y).float().mean()),
                 "test_loss": float(F.cross_entropy(head(e_test), test.y))}
        full = float((model(test.x[:16]) - head(e_test[:16])).abs().max())  # the head on embeddings == the model
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(path, model.state_dict())
    record = {"probe": probe, "steps": steps, "optimizer": "Adam lr 0.01, weight decay 1e-4, full batch",
              "train_sentences": len(train), "test_sentences": len(test), "embed_s": embed_s,
              "model_vs_head_max_abs_logit_diff": full, "init": str(path.relative_to(ROOT)), "seed": seed}
    write_json(record_path, record)
    print(json.dumps(record, indent=1))


SUBSETS = {  # name -> what the runs named fo_<name> / bp_<name> train
    "head": "classifier only",
    "lnbias": "block 5's LayerNorm weights/biases and linear biases + head",
    "lora": "rank-4 LoRA on block 5's linear weights + head (its weight, bias and own rank-2 adapter)",
    "top1": "every parameter of block 5 + head",
    "all": "every parameter",
}


def trainable_count(cfg, train) -> int:
    """Parameters the run perturbs or trains (``train`` only sizes the model: every run reads the same data)."""
    from baffle.estimator import num_elements, select_parameters

    return num_elements(select_parameters(build_model_for(cfg, train), cfg.model.trainable or None))


def federation(cfg) -> str:
    """The sweep's clients in words, for the report."""
    from baffle.sim.sampling import clients_per_round

    d = cfg.data
    if d.partition == "domain":
        return f"{d.num_clients} domain clients (movie, tweets, NYT, Amazon)"
    split = f"Dirichlet({d.alpha:g}) over the labels" if d.partition == "dirichlet" else d.partition
    return f"{d.num_clients} clients, {split}, {clients_per_round(cfg)} sampled per round"


def report(sweep_path: Path = SWEEP) -> None:
    import os

    from baffle.records.report import plot_accuracy
    from baffle.sweep import collect

    stem = sweep_path.stem
    png = OUT / f"{stem}_acc_vs_rounds.png"
    begin, end = f"<!-- {stem}:begin -->", f"<!-- {stem}:end -->"
    probe = json.loads((OUT / "text_subsets_probe.json").read_text())
    # the domain federation's results, to set beside another federation's runs of the same name
    domain = json.loads((OUT / "text_subsets.json").read_text())["runs"] if stem != SWEEP.stem and (OUT / "text_subsets.json").exists() else None
    sweep = load_sweep(sweep_path)
    rows = {r["name"]: r for r in collect(sweep) if "summary" in r}
    specs = {s.name: s for s in sweep.runs}
    base = make_config(sweep.runs[0], [])
    train, _ = load_data(base)  # loaded once: the runs differ in what trains, not in their data
    runs = {}
    for name, r in rows.items():
        cfg = make_config(specs[name], [])
        s = r["summary"]
        runs[name] = {
            "method": s["method"], "rounds": s["rounds"], "lr": cfg.optim.lr, "trainable": trainable_count(cfg, train),
            "final_test_acc": s["final_test_acc"], "best_test_acc": s["best_test_acc"],
            "forward_passes_per_client": s["total_forward_passes"] / cfg.data.num_clients,  # averaged over every client
            "backward_passes_per_client": s["total_backward_passes"] / cfg.data.num_clients,
            "upload_bytes_per_client_per_round": s["upload_bytes_per_client_per_round"], "wall_s": s["wall_s"],
            "history": r["history"],
        }
    # runs finished on another machine (the results directory is not committed): their recorded rows, said so
    recorded = json.loads((OUT / f"{stem}.json").read_text())["runs"] if (OUT / f"{stem}.json").exists() else {}
    carried = sorted(n for n in recorded if n not in runs and n in specs)
    runs |= {n: recorded[n] for n in carried}
    p = probe["probe"]["test_acc"]
    K = base.estimator.K
    table, goals = [], []
    for sub, what in SUBSETS.items():
        fo, bp, fa = runs.get(f"fo_{sub}"), runs.get(f"bp_{sub}"), runs.get(f"fa_{sub}")
        if not fo and not bp and not fa:
            continue
        n = (fo or bp or fa)["trainable"]
        cell = lambda r: f"{percent(r['final_test_acc'])} ({percent(r['best_test_acc'])})" if r else "not run"
        gap = f"{100 * (fo['final_test_acc'] - bp['final_test_acc']):+.2f}" if fo and bp else "n/a"
        gain = f"{100 * (fo['final_test_acc'] - p):+.2f}" if fo else "n/a"
        wall = " / ".join(f"{r['wall_s']:,.0f}" if r else "-" for r in (fo, bp, fa))
        # ZO-SGD's expected descent per round is about K / (n + K) of a gradient step's (Gaussian directions):
        equiv = f"{fo['rounds'] * K / (n + K):,.3g}" if fo else "-"
        fa_gap = f"{100 * (fo['final_test_acc'] - fa['final_test_acc']):+.2f}" if fo and fa else "n/a"
        row = [f"`{sub}`", what, f"{n:,}", f"{(fo or bp or fa)['lr']:g}", cell(fo), cell(bp), cell(fa), gain, gap, fa_gap, equiv,
               f"{fo['forward_passes_per_client']:,.0f}" if fo else "-",
               f"{fo['upload_bytes_per_client_per_round']:,}" if fo else "-",
               f"{bp['upload_bytes_per_client_per_round']:,}" if bp else "-", wall]
        if domain is not None:  # the same runs on the 4 domain clients: what this federation costs
            row.insert(7, " / ".join(percent(domain[f"{m}_{sub}"]["final_test_acc"]) if f"{m}_{sub}" in domain else "-" for m in ("fo", "bp")))
        table.append(row)
        if fo:
            goals.append([f"`fo_{sub}` >= probe + 8", percent(fo["final_test_acc"]) + "%", percent(p + 0.08) + "%",
                          "yes" if fo["final_test_acc"] >= p + 0.08 else f"no (gap {100 * (p + 0.08 - fo['final_test_acc']):.2f})"])
        if fo and bp:
            goals.append([f"`fo_{sub}` within 3 points of `bp_{sub}`", percent(fo["final_test_acc"]) + "%", f">= {percent(bp['final_test_acc'] - 0.03)}%",
                          "yes" if fo["final_test_acc"] >= bp["final_test_acc"] - 0.03 else
                          f"no (gap {100 * (bp['final_test_acc'] - 0.03 - fo['final_test_acc']):.2f})"])
        if fo and fa:
            goals.append([f"`fo_{sub}` within 3 points of `fa_{sub}` (FedAvg)", percent(fo["final_test_acc"]) + "%",
                          f">= {percent(fa['final_test_acc'] - 0.03)}%",
                          "yes" if fo["final_test_acc"] >= fa["final_test_acc"] - 0.03 else
                          f"no (gap {100 * (fa['final_test_acc'] - 0.03 - fo['final_test_acc']):.2f})"])
    curves = {name: r["history"] for name, r in runs.items()}
    if curves:
        plot_accuracy(curves, png, "round", "round")
    load = os.getloadavg()[0]
    write_json(OUT / f"{stem}.json", {"probe": probe, "runs": runs, "loadavg_at_report": load})
    title = sweep.title
    command = "report" if stem == SWEEP.stem else f"report --sweep {sweep_path.relative_to(ROOT).as_posix()}"
    columns = ["subset", "trains", "trainable params", "lr", "forward-only final (best) %", "backprop final (best) %",
               "FedAvg final (best) %", "FO vs probe", "FO - BP", "FO - FedAvg", "FO rounds x K/(n+K)", "FO fwd passes / client", "FO upload B / client / round",
               "BP upload B / client / round", "wall s FO / BP / FedAvg"]
    if domain is not None:
        columns.insert(7, "4 domain clients: FO / BP final %")
    body = "\n".join([
        f"Generated by `python experiments/text_subsets.py {command}` from `baffle sweep {sweep_path.relative_to(ROOT).as_posix()}` (one "
        "seed; single-threaded runs, two side by side on 2 cores). Data: the seeded subsets of `data.train_subset` = "
        f"{probe['train_sentences']:,} training and {probe['test_sentences']:,} test sentences, {federation(base)}, "
        "batch 32. Every run starts from the linear probe (`python experiments/text_subsets.py init`: "
        f"{probe['optimizer']}, {probe['steps']} steps on the pretrained embeddings): **{percent(p)}%** test accuracy. "
        f"Forward-only = `baffle` (K={K}, sigma {base.estimator.sigma:g}, uploads K loss differences); backprop = `fedsgd` with the same server "
        "optimizer (Adam, no weight decay, warm-up + cosine, EMA 0.98), rounds and minibatches; FedAvg = `fedavg` (`fa_*` "
        "runs where the sweep has them): 10 local SGD steps (momentum 0.9, the run's `federation.local_lr`, one untuned rate) "
        "per round over a tenth of the rounds, so the same minibatches per client, the server averaging the uploaded "
        "tensors (EMA 0.98^10 per round). `lr`: the server rate of the forward-only and FedSGD runs. Accuracy: final (best) "
        "on the EMA weights, every 50 rounds. `FO vs probe` and `FO - BP` in points, on the final accuracy. Wall s = "
        "forward-only / FedSGD / FedAvg, side by side with another run: compare forward passes, not wall time. "
        "`FO rounds x K/(n+K)`: with K Gaussian directions over n parameters a forward-only round descends, in "
        "expectation and at its best learning rate, about K/(n+K) as far as one gradient step (the estimate's "
        "cosine with the gradient is about sqrt(K/(n+K))), so this column is the run's budget in gradient-step "
        "equivalents: the backprop twin took one gradient step per round. The test subset's sampling error: about "
        f"{100 * (p * (1 - p) / probe['test_sentences']) ** 0.5:.1f} points (one standard error at the probe's accuracy).",
        "",
        markdown_table(columns, table, ["left", "left"] + ["right"] * (len(columns) - 2)),
        "",
        *([f"Rows of {', '.join(f'`{n}`' for n in carried)}: from the previous report's record "
           f"({OUT.relative_to(ROOT).as_posix()}/{stem}.json); their run directories are not on this machine (rerun "
           "them with the sweep command above).", ""] if carried else []),
        "Goals (issue 15, judged on this short task):",
        "",
        markdown_table(["goal", "measured", "target", "met"], goals, ["left", "right", "right", "left"]),
        "",
        "![accuracy vs rounds]({png})",
        "",
    ])
    md = f"# {title}\n\n" + body.replace("{png}", png.name)
    write_text(OUT / f"{stem}.md", md)
    section = f"{begin}\n## {title}\n\n" + body.replace("{png}", "../" + png.relative_to(ROOT).as_posix()) + end
    write_section(DOC, begin, end, section, title="# all-MiniLM-L6-v2 on VADER\n")
    print(md)


SEEDS = ROOT / "experiments" / "text_subsets_seeds.toml"
SEED_SUBSETS = ("head", "lora", "lnbias")  # the pairs text_subsets_seeds.toml runs at seeds 1 and 2


def mean_sd(xs: list[float], signed: bool = False) -> str:
    """``mean ± sd`` in points of a list of fractions (sample standard deviation; the mean alone for one value)."""
    import statistics

    m = f"{100 * statistics.fmean(xs):{'+' if signed else ''}.2f}"
    return f"{m} ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else m


def report_seeds() -> None:
    """The head, LoRA and LayerNorm/bias pairs over seeds 0, 1, 2: seed 0 from text_subsets.toml's record, seeds 1
    and 2 from text_subsets_seeds.toml (its finished runs, else its own previous record), each against its own
    seed's probe. Writes experiments/results/text_subsets_seeds.{json,md} and its section of docs/finetune-text.md."""
    import os
    import statistics

    from baffle.sweep import collect

    seed0 = json.loads((OUT / "text_subsets.json").read_text())
    probes = {0: seed0["probe"]["probe"]["test_acc"]}
    for seed in (1, 2):
        path = probe_paths(seed)[1]
        if not path.exists():
            raise SystemExit(f"{path} is missing: run python experiments/text_subsets.py init --seed {seed}")
        probes[seed] = json.loads(path.read_text())["probe"]["test_acc"]
    sweep = load_sweep(SEEDS)
    done = {r["name"]: r["summary"] for r in collect(sweep) if "summary" in r}
    recorded = json.loads((OUT / "text_subsets_seeds.json").read_text())["runs"] if (OUT / "text_subsets_seeds.json").exists() else {}
    runs, carried = {}, []
    for name in (s.name for s in sweep.runs):
        if name in done:
            s = done[name]
            runs[name] = {k: s[k] for k in ("final_test_acc", "best_test_acc", "wall_s", "rounds")}
        elif name in recorded:
            runs[name], _ = recorded[name], carried.append(name)
    for sub in SEED_SUBSETS:  # seed 0: the domain sweep's runs of the same name
        for m in ("fo", "bp"):
            if f"{m}_{sub}" in seed0["runs"]:
                r = seed0["runs"][f"{m}_{sub}"]
                runs[f"{m}_{sub}_seed0"] = {k: r[k] for k in ("final_test_acc", "best_test_acc", "wall_s", "rounds")}
    table, goals = [], []
    for sub in SEED_SUBSETS:
        seeds = [s for s in (0, 1, 2) if f"fo_{sub}_seed{s}" in runs and f"bp_{sub}_seed{s}" in runs]
        if not seeds:
            continue
        fo = [runs[f"fo_{sub}_seed{s}"]["final_test_acc"] for s in seeds]
        bp = [runs[f"bp_{sub}_seed{s}"]["final_test_acc"] for s in seeds]
        gain = [f - probes[s] for f, s in zip(fo, seeds)]
        gap = [f - b for f, b in zip(fo, bp)]
        table.append([f"`{sub}`", SUBSETS[sub], ", ".join(map(str, seeds)), " / ".join(percent(p) for p in (probes[s] for s in seeds)),
                      " / ".join(map(percent, fo)), mean_sd(fo), " / ".join(map(percent, bp)), mean_sd(bp),
                      mean_sd(gain, True), mean_sd(gap, True), " / ".join(f"{runs[f'fo_{sub}_seed{s}']['wall_s']:,.0f}" for s in seeds)])
        worst = max(g for g in (0.08 - x for x in gain))
        goals.append([f"`fo_{sub}` >= its seed's probe + 8", mean_sd(gain, True) + " points", "+8 on every seed",
                      "yes" if worst <= 0 else f"no (gap {100 * worst:.2f} on the worst seed)"])
        low = min(gap)
        goals.append([f"`fo_{sub}` within 3 points of `bp_{sub}`", mean_sd(gap, True) + " points", ">= -3 on every seed",
                      "yes" if low >= -0.03 else f"no (worst seed {100 * low:+.2f})"])
    write_json(OUT / "text_subsets_seeds.json", {"probes": probes, "runs": runs, "loadavg_at_report": os.getloadavg()[0]})
    begin, end = "<!-- text_subsets_seeds:begin -->", "<!-- text_subsets_seeds:end -->"
    columns = ["subset", "trains", "seeds", "probe % (per seed)", "forward-only final %", "FO mean ± sd",
               "backprop final %", "BP mean ± sd", "FO vs probe (points)", "FO - BP (points)", "FO wall s"]
    body = "\n".join([
        "Generated by `python experiments/text_subsets.py report --seeds` from `baffle sweep "
        "experiments/text_subsets_seeds.toml` (seeds 1, 2) and the seed-0 runs of the same names in "
        "experiments/results/text_subsets.json. The recipe of text_subsets.toml (4 domain clients, 2,000 / 1,000 "
        "sentences, batch 32, 300 rounds, K=20, sigma 1e-3); run.seed draws the sentences, the minibatches, the "
        "directions and the LoRA initialisation, and every seed starts from the linear probe trained on its own "
        "subset (`init --seed`), so `FO vs probe` is each run against its own probe. Mean ± sample standard "
        "deviation over the seeds, of the per-seed values. Wall s: forward-only, two single-threaded runs side by "
        "side on 2 cores (seeds 1 and 2 with the prefix cache's row store, seed 0 before it). The whole top block "
        "(`top1`) and backprop of every parameter stay at seed 0 for compute (experiments/results/text_subsets.md).",
        "",
        markdown_table(columns, table, ["left", "left"] + ["right"] * (len(columns) - 2)),
        "",
        *([f"Rows of {', '.join(f'`{n}`' for n in carried)}: from the previous record "
           "(experiments/results/text_subsets_seeds.json); their run directories are not on this machine.", ""] if carried else []),
        "Goals (issue 15) over the seeds:",
        "",
        markdown_table(["goal", "measured (mean ± sd)", "target", "met"], goals, ["left", "right", "right", "left"]),
        "",
    ])
    title = sweep.title
    write_text(OUT / "text_subsets_seeds.md", f"# {title}\n\n{body}")
    write_section(DOC, begin, end, f"{begin}\n## {title}\n\n{body}{end}", title="# all-MiniLM-L6-v2 on VADER\n")
    print(f"# {title}\n\n{body}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("init", "report"))
    ap.add_argument("--sweep", type=Path, default=SWEEP, help="the sweep to report (default: experiments/text_subsets.toml)")
    ap.add_argument("--seeds", action="store_true", help="report: the 3-seed table (text_subsets_seeds.toml + seed 0)")
    ap.add_argument("--seed", type=int, default=0, help="init: the run.seed whose subset trains the probe (0, 1, 2)")
    args = ap.parse_args()
    if args.what == "init":
        init(seed=args.seed)
    elif args.seeds:
        report_seeds()
    else:
        report(args.sweep.resolve())


if __name__ == "__main__":
    main()
