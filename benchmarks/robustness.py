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

from baffle import estimator
from baffle.config import Config
from baffle.engine import Perturber
from baffle.records.results import results_dir, write_json, write_section
from baffle.records.tables import percent, table_lines, yes_no
from baffle.protocol.messages import Upload
from baffle.sim.rounds import RoundRunner
from baffle.sim.loop import Simulation


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
            pert = Perturber(params)
            try:
                base = losses()
                for k, seed in enumerate(plan.seeds):
                    pert.set(seed, plan.sigma)
                    diffs[:, k] = losses() - base
            finally:
                pert.restore()
        return [Upload(cl.client_id, round_idx, diffs[j].copy(), sizes[j]) for j, cl in enumerate(clients)]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = results_dir(__file__)
DOC = ROOT / "docs" / "robustness.md"
BEGIN, END = "<!-- robustness:begin -->", "<!-- robustness:end -->"

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
    "optim.betas": [0.9, 0.99],  # baffle's defaults when these runs were made (experiments/default_optim.toml)
    "estimator.noise": "v1",
    "run.checkpoint_every": 0,
    "run.threads": 1,
    "run.seed": 0,
}
AGGREGATORS = ("mean", "median", "trimmed_mean", "clipped_mean", "multi_krum")
ATTACKS = ("scale_neg10", "scale_100", "noise", "sign_flip")
FRACTIONS = (0.1, 0.3)
DP_BASE = {"data.num_clients": 100, "federation.clients_per_round": 10, "privacy.clip": 0.002, "privacy.delta": 1e-5}
DP_RUNS = [("none", 0.0), ("central", 1.0), ("central", 2.0), ("central", 4.0), ("central", 8.0), ("local", 1.0), ("local", 4.0)]


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
        write_json(path, data)
        print(f"{name} {key}: acc {100 * res['test_acc']:.2f}% eps {res['epsilon']} ({res['wall_s']} s)", flush=True)
    return data


def robustness_jobs(fraction: float | None, aggregators: tuple[str, ...] = AGGREGATORS[:4]) -> list[tuple[str, dict]]:
    """Attack runs at one attacker fraction (None: both); the 30% sweep also runs the clean baselines."""
    with_clean = fraction in (0.3, None)
    jobs = [(f"{agg}/clean", {"federation.aggregator": agg}) for agg in aggregators] if with_clean else []
    for frac in (0.3, 0.1) if fraction is None else (fraction,):
        for attack in ("sign_flip", "scale_neg10", "scale_100", "noise"):  # the goal's attacks first
            for agg in aggregators:
                jobs.append(
                    (
                        f"{agg}/{attack}/{frac}",
                        {"federation.aggregator": agg, "federation.attack": attack, "federation.attack_fraction": frac},
                    )
                )
    return jobs


def privacy_jobs() -> list[tuple[str, dict]]:
    return [(f"{mode}/{z}", {**DP_BASE, "privacy.mode": mode, "privacy.noise_multiplier": z}) for mode, z in DP_RUNS]


STATIC = """## What the server does with untrusted clients

**Validation** (`baffle.server.validation.upload_check`, called by `ServerStrategy.validate` in `baffle.server.ingest.ingest_uploads`, the single point where uploads enter
aggregation; wire messages go through `ServerStrategy.validate_bytes`, which decodes with `Upload.from_bytes`
first). Each rejection is logged (`WARNING baffle: round R: rejected upload from client C [code]: reason`)
and counted; metrics.jsonl rows carry `rejected_by_reason` (cumulative), `round_rejected_by_reason`,
`round_sampled`, `round_answered`, `round_accepted`, `round_skipped`. Codes: `malformed` (not an Upload,
undecodable bytes), `bad_client_id`, `unknown_sender` (not sampled this round), `duplicate`, `bad_round`,
`stale_round`, `future_round`, `wrong_type`, `wrong_dtype` (not float32), `wrong_length` (not K),
`non_finite`, `magnitude` (|dL| > 1e4), `bad_sample_count` (< 1 or above the round's batch size: the count
weights the mean, so an unbounded claim would let one client outvote everyone). A round with fewer valid
uploads than `federation.min_clients` is skipped: model, optimizer state and EMA stay bit-identical
(`tests/server/test_validation.py`, `tests/server/test_fuzz.py`, which also fuzzes random Upload fields and bytes).

**A defence made for scalars** (`federation.aggregator = "fltrust"`, `baffle.server.trust`). Only a BAFFLE
server knows the round's seeds, so with forward passes alone on a small trusted root batch
(`federation.trust_root_samples`, 64 training samples by default) it computes its own K loss differences r
along the clients' directions. Each client's score is a reputation, the average over about
1/(1 - `federation.trust_decay`) = 1,000 rounds of the cosine between its K-vector and r; clients with a
positive reputation are averaged with that weight, every vector clipped to the round's median length (so a
-10x or x100 client counts no more than an honest one). Per-round FLTrust scores did not work here: near
convergence an honest batch-8 vector's cosine to r averaged 0.09 (37% of them <= 0), and training with them
stalled at 76% under 30% sign-flippers, below the plain mean's 85%; a 100-round reputation (decay 0.99)
reached 88.6% and then declined as honest cosines shrank toward 0; the 1,000-round default reached 93.3%
(93.85% without attackers; one seed). Threat model: hostile clients may send any
K-vector (validation still bounds its form), up to a minority; the root batch is clean and representative.
It cannot stop attackers that stay close to r (they then do little harm), attackers that behave until their
reputation is high and then spend it (the slow average limits the rate), or a biased root batch; it costs
the server K+1 forward passes of the root batch per round and one model copy. Its accuracy at convergence is
in [docs/results.md](results.md) ("Aggregators against 30% hostile clients at convergence").

**Faults.** Which sampled clients answer is decided before any upload is computed (`baffle.sim.faults`), as a
pure function of (seed, round, client), so the per-client loop and the fused path see the same clients and
a resumed run drops the same ones. Byzantine behaviour (`baffle.sim.attacks`) is applied to the computed Upload
objects, after local DP noise, for a fixed seeded set of clients.

**Crash safety.** `records.checkpoint.atomic_write_bytes`: temp file, write, fsync, rename, fsync of the
directory; a failed write removes its temp file; temp files of a writer killed mid-write are removed when a
run (re)starts. Each metrics row is fsynced before the checkpoint that covers it; on resume, rows after the
checkpoint and a torn last line are dropped; a run killed before its first checkpoint (no summary, no
evaluation past the first checkpoint round) restarts from round 0.

**Files from disk cannot run code** (`baffle.records.checkpoint`). A checkpoint is `BAFFLE02` | SHA-256 |
HMAC-SHA256 | payload, and the payload is a safetensors file: tensors as raw bytes, everything else
(optimizer state, EMA, RNG states, counters, the resolved config) a JSON tree (schema `baffle.checkpoint/2`)
in its metadata. Nothing is unpickled. The SHA-256 catches truncation and bit rot (the error names the
file, `--resume` exits with status 2). The HMAC is keyed by the run's `.baffle-key` (32 random bytes, mode
0600 like the checkpoint): `--resume` refuses a checkpoint altered by anyone who cannot read that key, or
copied in from another run. That is authenticity against other users, not against the run's owner or root,
who can read the key. `--init` takes safetensors, a baffle checkpoint (HMAC-checked when its key is beside
it, integrity only otherwise) or a plain state_dict (torch's `weights_only=True` loader); anything else,
and old pickled checkpoints (`BAFFLE01`), are refused in one line (`baffle convert-checkpoint
--trust-pickle OLD` rewrites one you wrote yourself). `tests/records/test_checkpoint_safety.py` crafts 40 malicious
or malformed files (pickle payloads in .pt, legacy and old-header files, bogus safetensors headers, hostile
JSON trees: huge numbers, deep nesting, object dtypes, forged HMACs) and hands each to every loader: 120 of
120 loads refused, 0 payloads ran (the same files through `baffle run --init`: 40 one-line refusals).

**Run directories never mix** (`baffle.records.rundir`). `baffle run --out DIR` refuses a regular file, a
non-empty directory, and a directory holding a run unless `--overwrite`, which deletes that run's files
and refuses if the directory holds anything else. `--resume DIR` never deletes history: a missing
checkpoint in a run that finished, or whose metrics reach past the first checkpoint round, is an error.
The config (config.toml plus `--set`) must equal the resolved config stored in the checkpoint, except the
declared-safe keys `run.rounds` (not before the checkpoint's round; with `optim.cosine` the decay is
recomputed for the new length), `run.eval_every`, `run.checkpoint_every` and `run.threads`; the error
names each differing key with both values. `tests/records/test_rundir.py` changes each config key in turn: all 65
others refused by name, the 4 declared safe accepted.

**Bounded inputs** (`baffle.preflight`). Before any work: every integer fits 64 bits, a few sizes have
hard bounds (`estimator.K` <= 10^6, `data.image_size` <= 4096, ...), and an estimate of peak memory
(datasets at the configured image size, server state, the engine's chunks of K directions, activations;
the model is built on torch's meta device) must fit in 90% of the machine's memory, and a lower bound on
compute time in 720 hours (`--no-preflight` skips the estimate, not the bounds). Every CLI error is one
line, `baffle: error: ...`, naming the key or file (exit 2; 70 for an internal error, whose traceback
`BAFFLE_DEBUG=1` shows). `tests/test_cli_fuzz.py` runs 76 bad command lines: 76 one-line errors naming
the key or file, no traceback; and 150 random `--set` combinations, each reaching the simulator as a valid
config or refused in one line.

**Differential privacy** (`baffle.privacy`): the unit is a client (replace-one adjacency, sensitivity 2C of
a vector clipped to L2 norm C). `local`: each client clips and adds N(0, (zC)^2) per coordinate before
uploading; epsilon is the worst client's composition over the rounds it uploaded in (no amplification: the
server knows who took part). `central`: the server clips each vector, adds N(0, (zC)^2) once to the sum and
divides by the count (needs `aggregator = "mean"`); epsilon uses sampling without replacement of m of N
clients per round. Epsilon at `privacy.delta` comes from dp-accounting's RDP accountant; it is written to
metrics.jsonl (`epsilon`, `delta`, `privacy_mode`) and shown in the progress bar (`eps=`).

| key | default | meaning |
|---|---|---|
| `federation.dropout_rate` | `0.0` | probability that a sampled client fails mid-round |
| `federation.straggler_delay_s` | `0.0` | mean of the simulated (exponential) response time; never slept |
| `federation.timeout_s` | `0.0` | clients slower than this are dropped (0 = wait for all); metrics `sim_wait_s` |
| `federation.attack` | `none` | `none`, `scale_neg10`, `scale_100`, `noise`, `sign_flip` (simulated Byzantine clients) |
| `federation.attack_fraction` | `0.0` | fraction of all clients that are hostile |
| `privacy.mode` | `none` | `none`, `local`, `central` |
| `privacy.clip` | `0.01` | L2 bound C of each client's K-vector (typical norm: sigma x gradient norm x sqrt(K)) |
| `privacy.noise_multiplier` | `1.0` | z: noise std z*C per coordinate |
| `privacy.delta` | `1e-5` | delta at which epsilon is reported |

"""


EXTRA_SEEDS = (1, 2)
GOAL_CELLS = [
    ("clean", {}),
    ("sign_flip/0.3", {"federation.attack": "sign_flip", "federation.attack_fraction": 0.3}),
    ("scale_neg10/0.3", {"federation.attack": "scale_neg10", "federation.attack_fraction": 0.3}),
]


def honest_correlation(rounds: int = 20) -> dict:
    """How alike are honest clients' K-vectors? Mean pairwise Pearson correlation over the first rounds of
    the clean run. Vector-level defences (Krum, norm or cosine filters) can only single out a sign-flipped
    vector if honest vectors agree with each other."""
    cfg = Config()
    for k, v in {**BASE, "run.rounds": rounds, "run.eval_every": rounds}.items():
        cfg.set(k, v)
    sim = Simulation(cfg.validate(), None, progress=False)
    runner = FusedRunner(sim.fed)
    corr, cos_to_mean = [], []
    for r in range(rounds):
        V = np.stack([u.loss_diffs for u in runner.client_uploads(list(range(cfg.data.num_clients)), r)]).astype(np.float64)
        C = np.corrcoef(V)
        n = len(V)
        corr.append(float((C.sum() - n) / (n * (n - 1))))
        m = V.mean(0)
        cos_to_mean.append(float(np.mean(V @ m / (np.linalg.norm(V, axis=1) * np.linalg.norm(m)))))
        runner.run_round(r)
    return {
        "rounds": rounds,
        "mean_pairwise_correlation": float(np.mean(corr)),
        "mean_cosine_to_the_mean": float(np.mean(cos_to_mean)),
        "per_round_correlation": corr,
    }


def _pct(x: float | None) -> str:
    return percent(x, missing="-")


def _best_rows(cells: list[str], acc_of, clean: float) -> list[list[str]]:
    """Per attack cell: the best robust aggregator (not the plain mean), its accuracy and gap to clean."""
    rows = []
    for cell in cells:
        cands = [(v, agg) for agg in AGGREGATORS[1:] if (v := acc_of(f"{agg}/{cell}")) is not None]
        if cands:
            acc, agg = max(cands)
            gap = 100 * (clean - acc)
            rows.append([cell.split("/")[0], agg, _pct(acc), f"{gap:.2f}", yes_no(gap <= 3, "NO")])
    return rows


def render() -> str:
    r30, r10, rk, dp = (_load(RESULTS / f"{n}.json") for n in ("robustness_30", "robustness_10", "robustness_krum", "privacy"))
    rob = {"rounds": r30.get("rounds"), "runs": {**r10.get("runs", {}), **r30.get("runs", {}), **rk.get("runs", {})}}
    lines = [
        "# Robustness and privacy",
        "",
        "Generated by `benchmarks/robustness.py` from `benchmarks/results/robustness_30.json`,",
        "`robustness_10.json`, `privacy.json` and `crash_trials.json` (written by `benchmarks/crash_trials.py`);",
        "every number below is in those files. Do not edit by hand: rerun `python benchmarks/robustness.py --part doc`.",
        "",
        STATIC,
        "## Measured: setting (short runs sized to a shared 2-core CPU)",
        "",
        f"MNIST IID at 14x14, LeNet (GroupNorm, Hardswish, 26.7k parameters), K = {BASE['estimator.K']} forward",
        f"differences, sigma = {BASE['estimator.sigma']}, batch {BASE['federation.batch_size']}, Adam lr {BASE['optim.lr']}, "
        f"{rob.get('rounds', '?')} rounds, one seed ({BASE['run.seed']}),",
        "accuracy of the final model on the full 10k test set. One run per cell and one seed: run-to-run",
        "variation was not measured, so read differences of a few points as noise. These runs are far too short",
        "to reach the accuracy BAFFLE gets with long runs and large K: compare cells with each other, not with",
        "the paper. 10 clients, all sampled every round; the attackers are a fixed seeded subset",
        "(1 client at 10%, 3 at 30%). The trimmed mean trims 30% at each end per coordinate; the clipped mean",
        "scales every vector down to the median norm; multi-Krum (assumed Byzantine fraction 30%) averages the",
        "7 vectors closest to their nearest neighbours. Attacks act on the K-vector a client uploads",
        "(`src/baffle/attacks.py`): scale_neg10 = -10x, scale_100 = 100x, noise = Gaussian with 10x the honest",
        "RMS, sign_flip = -1x. All of them pass upload validation: they are the aggregator's job.",
        "",
    ]
    runs = rob.get("runs", {})
    if runs:
        lines += ["## Accuracy (%) under attack", ""]
        lines += table_lines(
            ["aggregator", "clean"] + [f"{a} {int(100 * f)}%" for f in FRACTIONS for a in ATTACKS],
            [[agg, _pct(runs.get(f"{agg}/clean", {}).get("test_acc"))]
             + [_pct(runs.get(f"{agg}/{a}/{f}", {}).get("test_acc")) for f in FRACTIONS for a in ATTACKS] for agg in AGGREGATORS],
        )
        clean = runs.get("mean/clean", {}).get("test_acc")
        lines += ["", "## The goal: 30% sign-flip / scaling attackers, best robust aggregator within 3 points of clean", ""]
        lines += [
            "Multi-Krum shows the same accuracy for scale_neg10, scale_100 and noise at a given fraction because it",
            "dropped exactly the attackers in every round, so those runs are the same run. Without attackers it",
            "still drops 30% of the (honest) vectors each round, hence its lower clean accuracy.",
            "",
        ]
        if clean is not None:
            lines.append(f"Clean accuracy (weighted mean, no attack): {_pct(clean)}%.")
            lines.append("")
            best = _best_rows([f"{a}/0.3" for a in ("sign_flip", "scale_neg10", "scale_100")],
                              lambda key: runs[key]["test_acc"] if key in runs else None, clean)
            lines += table_lines(["attack (30%)", "best robust aggregator", "its accuracy", "gap to clean (points)", "within 3?"], best)
        lines.append("")
    seeds = [runs] + [r for n in EXTRA_SEEDS if (r := _load(RESULTS / f"robustness_seed{n}.json").get("runs", {}))]
    if len(seeds) > 1:
        names = " / ".join(f"seed {i}" for i in range(len(seeds)))
        lines += [
            f"### The goal's cells with {len(seeds)} seeds (run.seed = {', '.join(str(i) for i in range(len(seeds)))})",
            "",
        ]
        lines += table_lines(
            ["aggregator"] + [f"{cell}: {names}" for cell, _ in GOAL_CELLS],
            [[agg] + [" / ".join(_pct(sd.get(f"{agg}/{cell}", {}).get("test_acc")) for sd in seeds) for cell, _ in GOAL_CELLS]
             for agg in AGGREGATORS],
        )
        lines.append("")

        def both(key: str) -> float | None:
            vals = [sd.get(key, {}).get("test_acc") for sd in seeds]
            return None if any(v is None for v in vals) else sum(vals) / len(vals)

        clean2 = both("mean/clean")
        if clean2 is not None:
            rows = _best_rows(["sign_flip/0.3", "scale_neg10/0.3"], both, clean2)
            if rows:
                lines += [f"Averaged over the {len(seeds)} seeds: clean (mean) {_pct(clean2)}%.", ""]
                lines += table_lines(["attack (30%)", f"best robust aggregator ({len(seeds)}-seed mean)", "its accuracy",
                                      "gap to clean (points)", "within 3?"], rows)
                lines.append("")
    snr = RESULTS / "snr.json"
    if snr.exists():
        c = json.loads(snr.read_text())
        lines += [
            "### Why the sign flip is hard for every aggregator here",
            "",
            f"Over the first {c['rounds']} rounds of the clean run, the honest clients' K-vectors have a mean pairwise",
            f"correlation of {c['mean_pairwise_correlation']:.3f} and a mean cosine to their own average of",
            f"{c['mean_cosine_to_the_mean']:.3f} (`--part snr`, `benchmarks/results/snr.json`). Each client's loss",
            "differences on one minibatch of 16 are dominated by that minibatch's own gradient noise; the common",
            "signal only appears after averaging. A sign-flipped vector therefore looks exactly like an honest one to",
            "any statistic (coordinate-wise or whole-vector): it cannot be singled out, it just cancels an honest",
            "client, and coordinate-wise statistics additionally lose efficiency on the noisy honest values",
            "(compare each aggregator's clean column with the mean's). Scaled or noise vectors ARE detectable by",
            "their size. Larger client batches (higher per-client SNR) would be needed for vector-level defences.",
            "",
        ]
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
        ]
        rows = []
        for mode, z in DP_RUNS:
            r = druns.get(f"{mode}/{z}")
            if r is None:
                continue
            eps = "inf (no clipping, no noise)" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
            rows.append([mode, z if mode != "none" else "-", eps, _pct(r["test_acc"])])
        lines += table_lines(["DP mode", "noise multiplier z", "epsilon", "test accuracy (%)"], rows)
        lines.append("")
    audit = RESULTS / "validation_audit.json"
    if audit.exists():
        v = json.loads(audit.read_text())
        lines += [
            "## Bad uploads: corruption audit",
            "",
            f"`benchmarks/validation_audit.py`: {v['rounds']} rounds of a federation fed {v['injected_bad_uploads']} bad uploads of",
            f"all {len(v['injected_by_kind'])} kinds next to the honest ones, run side by side with a twin that only gets the honest",
            f"ones. Bad uploads accepted: {v['accepted_bad_uploads']}; rounds after which model, optimizer state or EMA differed",
            f"by a single bit from the twin's (corruptions): {v['corrupted_rounds']}; all-bad rounds skipped: {v['rounds_skipped_all_bad']};",
            f"every rejection counted under its own reason: {v['every_rejection_has_its_own_reason']}.",
            "",
        ]
    crash = RESULTS / "crash_trials.json"
    if crash.exists():
        c = json.loads(crash.read_text())
        lines += [
            "## Crash safety: SIGKILL and resume",
            "",
            f"`benchmarks/crash_trials.py` (the harness of `tests/records/test_crash_resume.py`): {c['trials']} trials, each",
            f"killing `baffle run` with SIGKILL at random moments ({c['kills']} kills in all) and resuming with",
            f"`--resume` until the run finished. Weights identical to the uninterrupted run: {c['identical']}/{c['trials']}",
            f"({100 * c['identical'] / max(c['trials'], 1):.0f}%); metrics.jsonl without duplicate or missing rows:",
            f"{c['metrics_ok']}/{c['trials']}. Setting: {c['setting']}.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--part",
        choices=("robustness_30", "robustness_10", "robustness_krum", "seed1", "seed2", "privacy", "snr", "all", "doc"),
        default="all",
    )
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for frac in (0.3, 0.1):
        if args.part in (f"robustness_{int(100 * frac)}", "all"):
            sweep(f"robustness_{int(100 * frac)}", robustness_jobs(frac), args.rounds)
    if args.part in ("robustness_krum", "all"):
        sweep("robustness_krum", robustness_jobs(None, ("multi_krum",)), args.rounds)
    for seed in EXTRA_SEEDS:  # the goal's cells again with other seeds: how noisy is one run?
        if args.part in (f"seed{seed}", "all"):
            jobs = [(f"{agg}/{cell}", {**ov, "federation.aggregator": agg, "run.seed": seed}) for agg in AGGREGATORS for cell, ov in GOAL_CELLS]
            sweep(f"robustness_seed{seed}", jobs, args.rounds)
    if args.part in ("snr", "all"):
        write_json(RESULTS / "snr.json", honest_correlation())
    if args.part in ("privacy", "all"):
        sweep("privacy", privacy_jobs(), args.rounds)
    # only this script's section: the leakage and SecAgg+ dropout sections of the page are other scripts'
    write_section(DOC, BEGIN, END, f"{BEGIN}\n{render().rstrip()}\n{END}", title="")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
