"""Robust aggregation against Byzantine clients, and the accuracy / epsilon trade-off of DP, on MNIST.

Short runs sized to a shared 2-core CPU (the settings are in BASE and written into the outputs):
LeNet (GroupNorm, Hardswish) on MNIST IID downsampled to 14x14, 10 clients, full participation,
K = 10 forward differences, batch 16, Adam lr 0.05, ``--rounds`` rounds, one evaluation on the full test set.

The uploads are computed by ``FusedRunner`` (all clients of a round in one pass, identical math).

Parts (each appends to its JSON as runs finish, so an interrupted sweep resumes where it stopped):
  robustness: every aggregator x {10%, 30%} attackers x {scale_neg10, scale_100, noise, sign_flip},
              plus each aggregator without attack (its clean accuracy).
  privacy:    100 clients, 10 sampled per round (sampling amplifies central DP), central DP at several
              noise multipliers, local DP, and the same federation without DP.
Then docs/robustness.md is written from whatever results exist.

    nice -n 10 python benchmarks/robustness.py --part all --rounds 150
    (or the parts robustness_30, robustness_10, privacy in parallel processes, then --part doc)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from baffle import estimator, noise
from baffle.config import Config
from baffle.messages import Upload
from baffle.server import RoundRunner, Simulation


class FusedRunner(RoundRunner):
    """Computes all answering clients' uploads in one pass: same directions, same weights, their own batches.

    In the simulator every client of a round perturbs the same shared model along the same K seeded
    directions, so each direction is generated once and one forward pass over the concatenated minibatches
    gives every client's loss (per-sample losses, then per-client means). Each client still draws its own
    batch from its own sampler, so the uploads equal the per-client loop's up to float32 rounding. Only
    ``client_uploads`` is replaced: dropouts, DP noise, attacks, validation and aggregation are the library's.
    """

    def client_uploads(self, sampled: list[int], round_idx: int) -> list[Upload]:
        fed = self.fed
        plan = fed.strategy.plan(round_idx, send_weights=False)
        assert plan.scheme == "forward", "the fused benchmark path implements the forward scheme only"
        clients = [fed.clients[i] for i in sampled]
        batches = [cl.next_batch() for cl in clients]
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        sizes = [len(b[1]) for b in batches]
        model = clients[0].model
        params = estimator.select_parameters(model, fed.cfg.model.trainable)

        def losses() -> np.ndarray:
            per_sample = F.cross_entropy(model(x), y, reduction="none")
            return np.array([float(part.mean()) for part in per_sample.split(sizes)])

        diffs = np.empty((len(clients), plan.num_directions), dtype=np.float32)
        with torch.inference_mode():
            pert = estimator.Perturber(params)
            try:
                base = losses()
                for k, seed in enumerate(plan.seeds):
                    pert.set(torch.from_numpy(noise.direction(seed, pert.n)), plan.sigma)
                    diffs[:, k] = losses() - base
            finally:
                pert.restore()
        return [Upload(cl.client_id, round_idx, diffs[j].copy(), sizes[j]) for j, cl in enumerate(clients)]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "robustness.md"

BASE = {
    "data.name": "mnist",
    "data.image_size": 14,
    "data.num_clients": 10,
    "data.partition": "iid",
    "data.test_subset": 0,
    "data.eval_train_samples": 200,
    "model.name": "lenet",
    "estimator.K": 10,
    "estimator.sigma": 1e-3,
    "estimator.engine": "loop",
    "federation.batch_size": 16,
    "federation.trim_fraction": 0.3,  # the trimmed mean is told the attacker bound (30%)
    "optim.lr": 0.05,
    "run.checkpoint_every": 0,
    "run.threads": 1,
    "run.seed": 0,
}
AGGREGATORS = ("mean", "median", "trimmed_mean", "clipped_mean")
ATTACKS = ("scale_neg10", "scale_100", "noise", "sign_flip")
FRACTIONS = (0.1, 0.3)
DP_BASE = {"data.num_clients": 100, "federation.clients_per_round": 10, "privacy.clip": 0.002, "privacy.delta": 1e-5}
DP_RUNS = [("none", 0.0), ("central", 1.0), ("central", 2.0), ("central", 4.0), ("central", 8.0), ("local", 4.0)]


def run_one(overrides: dict, rounds: int) -> dict:
    cfg = Config()
    for k, v in {**BASE, **overrides, "run.rounds": rounds, "run.eval_every": rounds}.items():
        cfg.set(k, v)
    t0 = time.perf_counter()
    sim = Simulation(cfg.validate(), None, progress=False)
    sim.runner = FusedRunner(sim.fed)
    summary = sim.run()
    return {
        "overrides": overrides,
        "rounds": rounds,
        "test_acc": summary["final_test_acc"],
        "test_loss": summary["final_test_loss"],
        "epsilon": summary.get("epsilon"),
        "rejected": summary["rejected_uploads"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"settings": BASE, "runs": {}}


def _save(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def sweep(name: str, jobs: list[tuple[str, dict]], rounds: int) -> dict:
    path = RESULTS / f"{name}.json"
    data = _load(path)
    if data.get("rounds") not in (None, rounds):
        data = {"settings": BASE, "runs": {}}
    data["rounds"] = rounds
    for key, overrides in jobs:
        if key in data["runs"]:
            continue
        res = run_one(overrides, rounds)
        data["runs"][key] = res
        _save(path, data)
        print(f"{name} {key}: acc {100 * res['test_acc']:.2f}% eps {res['epsilon']} ({res['wall_s']} s)", flush=True)
    return data


def robustness_jobs(fraction: float) -> list[tuple[str, dict]]:
    """Attack runs at one attacker fraction; the 30% sweep also runs each aggregator's clean baseline."""
    jobs = [(f"{agg}/clean", {"federation.aggregator": agg}) for agg in AGGREGATORS] if fraction == 0.3 else []
    for frac in (fraction,):
        for attack in ("sign_flip", "scale_neg10", "scale_100", "noise"):  # the goal's attacks first
            for agg in AGGREGATORS:
                jobs.append(
                    (
                        f"{agg}/{attack}/{frac}",
                        {"federation.aggregator": agg, "federation.attack": attack, "federation.attack_fraction": frac},
                    )
                )
    return jobs


def privacy_jobs() -> list[tuple[str, dict]]:
    return [(f"{mode}/{z}", {**DP_BASE, "privacy.mode": mode, "privacy.noise_multiplier": z}) for mode, z in DP_RUNS]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def render() -> str:
    r30, r10, dp = (_load(RESULTS / f"{n}.json") for n in ("robustness_30", "robustness_10", "privacy"))
    rob = {"rounds": r30.get("rounds"), "runs": {**r10.get("runs", {}), **r30.get("runs", {})}}
    lines = [
        "# Robustness and privacy: measured",
        "",
        "Generated by `benchmarks/robustness.py` from `benchmarks/results/robustness_30.json`,",
        "`robustness_10.json` and `privacy.json`; every number below is in those files. Do not edit by hand.",
        "",
        "## Setting (short runs sized to a shared 2-core CPU)",
        "",
        f"MNIST IID at 14x14, LeNet (GroupNorm, Hardswish, 26.7k parameters), K = {BASE['estimator.K']} forward",
        f"differences, sigma = {BASE['estimator.sigma']}, batch {BASE['federation.batch_size']}, Adam lr {BASE['optim.lr']}, "
        f"{rob.get('rounds', '?')} rounds, one seed ({BASE['run.seed']}),",
        "accuracy of the final model on the full 10k test set (one run each: differences of about 1 point are",
        "within run-to-run noise). 10 clients, all sampled every round; the attackers are a fixed seeded subset",
        "(1 client at 10%, 3 at 30%). The trimmed mean trims 30% at each end per coordinate; the clipped mean",
        "scales every vector down to the median norm. Attacks act on the K-vector a client uploads",
        "(`src/baffle/attacks.py`): scale_neg10 = -10x, scale_100 = 100x, noise = Gaussian with 10x the honest",
        "RMS, sign_flip = -1x. All of them pass upload validation: they are the aggregator's job.",
        "",
    ]
    runs = rob.get("runs", {})
    if runs:
        lines += ["## Accuracy (%) under attack", ""]
        head = "| aggregator | clean | " + " | ".join(f"{a} {int(100 * f)}%" for f in FRACTIONS for a in ATTACKS) + " |"
        lines += [head, "|" + "---|" * (2 + len(FRACTIONS) * len(ATTACKS))]
        for agg in AGGREGATORS:
            cells = [_pct(runs.get(f"{agg}/clean", {}).get("test_acc"))]
            cells += [_pct(runs.get(f"{agg}/{a}/{f}", {}).get("test_acc")) for f in FRACTIONS for a in ATTACKS]
            lines.append(f"| {agg} | " + " | ".join(cells) + " |")
        clean = runs.get("mean/clean", {}).get("test_acc")
        lines += ["", "## The goal: 30% sign-flip / scaling attackers, best robust aggregator within 3 points of clean", ""]
        if clean is not None:
            lines.append(f"Clean accuracy (weighted mean, no attack): {_pct(clean)}%.")
            lines.append("")
            lines += ["| attack (30%) | best robust aggregator | its accuracy | gap to clean (points) | within 3? |", "|---|---|---|---|---|"]
            for attack in ("sign_flip", "scale_neg10", "scale_100"):
                cands = [(runs[k]["test_acc"], agg) for agg in AGGREGATORS[1:] if (k := f"{agg}/{attack}/0.3") in runs]
                if not cands:
                    continue
                acc, agg = max(cands)
                gap = 100 * (clean - acc)
                lines.append(f"| {attack} | {agg} | {_pct(acc)} | {gap:.2f} | {'yes' if gap <= 3 else 'NO'} |")
        lines.append("")
    druns = dp.get("runs", {})
    if druns:
        lines += [
            "## Differential privacy: accuracy vs epsilon",
            "",
            f"Same model and data, but 100 clients with 10 sampled per round (without replacement), {dp.get('rounds', '?')} rounds,",
            f"clip C = {DP_BASE['privacy.clip']} on each client's K-vector (L2), noise std = z * C per coordinate,",
            f"epsilon at delta = {DP_BASE['privacy.delta']} for replace-one-client adjacency (sensitivity 2C), from",
            "dp-accounting's RDP accountant (`src/baffle/privacy.py`). Central: the server noises the clipped sum once",
            "per round (sampling amplifies it). Local: every client noises its own vector, no amplification (the server",
            "knows who took part); epsilon is the worst client's over the rounds it uploaded in.",
            "",
            "| DP mode | noise multiplier z | epsilon | test accuracy (%) |",
            "|---|---|---|---|",
        ]
        for mode, z in DP_RUNS:
            r = druns.get(f"{mode}/{z}")
            if r is None:
                continue
            eps = "inf (no DP)" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
            lines.append(f"| {mode} | {z if mode != 'none' else '-'} | {eps} | {_pct(r['test_acc'])} |")
        lines.append("")
    crash = RESULTS / "crash_trials.json"
    if crash.exists():
        c = json.loads(crash.read_text())
        lines += [
            "## Crash safety: SIGKILL and resume",
            "",
            f"`benchmarks/crash_trials.py` (the harness of `tests/test_crash_resume.py`): {c['trials']} trials, each",
            f"killing `baffle run` with SIGKILL at random moments ({c['kills']} kills in all) and resuming with",
            f"`--resume` until the run finished. Weights identical to the uninterrupted run: {c['identical']}/{c['trials']}",
            f"({100 * c['identical'] / max(c['trials'], 1):.0f}%); metrics.jsonl without duplicate or missing rows:",
            f"{c['metrics_ok']}/{c['trials']}. Setting: {c['setting']}.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("robustness_30", "robustness_10", "privacy", "all", "doc"), default="all")
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for frac in (0.3, 0.1):
        if args.part in (f"robustness_{int(100 * frac)}", "all"):
            sweep(f"robustness_{int(100 * frac)}", robustness_jobs(frac), args.rounds)
    if args.part in ("privacy", "all"):
        sweep("privacy", privacy_jobs(), args.rounds)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
