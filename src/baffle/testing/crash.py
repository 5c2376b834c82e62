"""SIGKILL-and-resume trials of ``baffle run``: the harness of tests/records/test_crash_resume.py and
benchmarks/crash_trials.py (which writes the figures in docs/robustness.md).

Each trial starts ``baffle run`` in a subprocess on the tiny federation (8 rounds, a checkpoint and an
evaluation after every round, 25% dropouts, a sign-flipping client against the median, local DP noise: every
source of randomness a resume must replay), kills it with SIGKILL at random moments (before the first
checkpoint, mid-round, mid-save), restarts it with ``--resume`` (or from scratch if it died before writing
anything), and at the end compares with an uninterrupted in-process run: the final checkpoint's model,
optimizer and EMA must be bit-identical and metrics.jsonl must hold each evaluation exactly once with the
same values.

``interrupted_run`` is the in-process twin: a run stopped by KeyboardInterrupt at a chosen round, for the tests
that resume it (tests/sim/test_server.py, tests/methods/).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from baffle.config import Config
from baffle.testing import tiny_config

ROUNDS = 8
OVERRIDES = [
    f"run.rounds={ROUNDS}",
    "run.eval_every=1",
    "run.checkpoint_every=1",
    "run.seed=3",
    "data.eval_train_samples=100",
    "federation.dropout_rate=0.25",
    "federation.attack=sign_flip",
    "federation.attack_fraction=0.25",
    "federation.aggregator=median",
    "optim.lr=0.01",
    "privacy.mode=local",
    "privacy.clip=0.5",
    "privacy.noise_multiplier=0.3",
]
SETTING = (
    f"synthetic data, MLP (last two layers trained), 4 clients, K=16, {ROUNDS} rounds, checkpoint and evaluation "
    "every round, dropout 25%, one sign-flipping client vs median, local DP"
)


def config() -> Config:
    """The trials' config: the tiny federation with every source of randomness a resume must replay."""
    return tiny_config(OVERRIDES)


def write_config(directory: Path) -> Path:
    """The config as a TOML file, for ``baffle run --config`` in the child processes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tiny.toml"
    path.write_text(config().to_toml())
    return path


def reference_run(directory: Path) -> Path:
    """The uninterrupted run, in-process (same code path as the CLI, minus the process)."""
    from baffle.sim.loop import Simulation

    out = directory / "reference"
    Simulation(Config.load(write_config(directory)).validate(), out, progress=False).run()
    return out


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as err:  # a file, not a pipe: a full pipe would stall the child
        return subprocess.Popen(
            [sys.executable, "-m", "baffle.cli", "run", *args, "--no-progress"], stdout=subprocess.DEVNULL, stderr=err, env=env
        )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def killed_run(directory: Path, rng: np.random.Generator, max_kills: int, timeout_s: float = 600,
               min_kills: int = 0) -> tuple[Path, int]:
    """Run to completion through up to ``max_kills`` SIGKILLs at random moments; returns (out dir, kills).

    A random strike can come after the run has finished (on a fast machine 8 tiny rounds may end within the
    delay): with ``min_kills`` > 0 such a run is discarded and started afresh with new draws, so a test that
    must exercise a resume always does."""
    cfg = write_config(directory)
    out = directory / "killed"
    kills = 0
    deadline = time.monotonic() + timeout_s
    log = directory / "stderr.log"
    fresh = ["--config", str(cfg), "--out", str(out)]
    proc = _start(fresh, log)
    ckpt = out / "checkpoint.pt"
    while True:
        if kills < max_kills:
            if rng.random() < 0.25:
                delay = rng.uniform(0.0, 4.0)  # anywhere: start-up, before the first checkpoint, mid-round
            else:  # wait until this process has saved a round, then strike within the next rounds
                seen = _mtime(ckpt)
                while proc.poll() is None and _mtime(ckpt) == seen and time.monotonic() < deadline:
                    time.sleep(0.01)
                delay = rng.uniform(0.0, 1.5)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = _start(["--resume", str(out)] if (out / "config.toml").exists() else fresh, log)
                continue
        else:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        if proc.returncode != 0:
            raise RuntimeError(f"baffle run exited {proc.returncode}: {log.read_text()[-2000:]}")
        if kills < min_kills:  # finished before the strike: nothing was resumed, so try again from scratch
            if time.monotonic() > deadline:
                raise TimeoutError(f"no run was killed {min_kills} time(s) within {timeout_s} s")
            shutil.rmtree(out)
            kills = 0  # the count is the returned run's
            proc = _start(fresh, log)
            continue
        return out, kills


def compare(reference: Path, killed: Path) -> tuple[bool, bool, str]:
    """(weights identical, metrics identical without duplicates, explanation)."""
    from baffle.records import checkpoint

    a, b = checkpoint.load(reference / "checkpoint.pt"), checkpoint.load(killed / "checkpoint.pt")
    same = a["round"] == b["round"] == ROUNDS
    why = "" if same else f"final rounds {a['round']} vs {b['round']}"
    sa, sb = a["server"], b["server"]
    for k in sa["model"]:
        if not torch.equal(sa["model"][k], sb["model"][k]) or not torch.equal(sa["ema"]["shadow"][k], sb["ema"]["shadow"][k]):
            same, why = False, f"weights differ at {k}"
    for i, st in sa["optimizer"]["state"].items():
        for k, v in st.items():
            if not torch.equal(torch.as_tensor(v), torch.as_tensor(sb["optimizer"]["state"][i][k])):
                same, why = False, f"optimizer state {i}.{k} differs"

    def rows(d: Path) -> list[dict]:
        timing = ("wall_s",)
        return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in (d / "metrics.jsonl").read_text().splitlines()]

    debris = sorted(p.name for p in killed.glob(".*.tmp-*"))
    if debris:
        same, why = False, f"temporary files left behind: {debris}"
    ra, rb = rows(reference), rows(killed)
    metrics_ok = [r["round"] for r in rb] == list(range(1, ROUNDS + 1)) and ra == rb
    if not metrics_ok:
        why += f" metrics rounds {[r['round'] for r in rb]}"
    return same, metrics_ok, why


def run_trials(directory: Path, trials: int, max_kills: int, seed: int = 0) -> dict:
    """`trials` killed runs against one reference; the counts docs/robustness.md reports."""
    ref = reference_run(directory)
    rng = np.random.default_rng(seed)
    result = {"trials": trials, "kills": 0, "identical": 0, "metrics_ok": 0, "failures": [], "setting": SETTING}
    for t in range(trials):
        out, kills = killed_run(directory / f"trial{t}", rng, max_kills)
        same, metrics_ok, why = compare(ref, out)
        result["kills"] += kills
        result["identical"] += int(same)
        result["metrics_ok"] += int(metrics_ok)
        if not (same and metrics_ok):
            result["failures"].append({"trial": t, "kills": kills, "why": why})
        print(f"trial {t}: {kills} kills, identical={same}, metrics_ok={metrics_ok} {why}", flush=True)
    return result


def interrupted_run(cfg: Config, out: Path, at_round: int) -> None:
    """Run ``cfg`` in-process into ``out`` and stop it with KeyboardInterrupt as round ``at_round`` begins: what
    Ctrl-C leaves behind (the checkpoints written so far), for tests that resume it and compare with a whole run."""
    from baffle.sim.loop import Simulation

    sim = Simulation(cfg, out, progress=False)
    real = sim.runner.run_round

    def stop(r: int):
        if r == at_round:
            raise KeyboardInterrupt
        return real(r)

    sim.runner.run_round = stop
    try:
        sim.run()
    except KeyboardInterrupt:
        return
    raise AssertionError(f"the run ended before round {at_round}: nothing was interrupted")
