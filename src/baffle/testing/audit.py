"""Do rejected uploads ever touch the global model? The harness of tests/server/test_validation.py and
benchmarks/validation_audit.py (which writes the figures in docs/robustness.md).

Two identical tiny federations run side by side. Every round both receive the same honest uploads;
federation A additionally receives a random mix of bad uploads of every rejection kind, sent before the
honest ones so that each fails its own check (duplicates after the upload they copy), and every fifth round
ONLY bad ones, so the round must be skipped. A corruption is any round after which A's model, optimizer state
or EMA differ by a single bit from B's, or a bad upload that was accepted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from baffle.protocol.messages import Upload
from baffle.server.validation import MAX_ABS_LOSS_DIFF
from baffle.sim.loop import Simulation
from baffle.sim.rounds import RoundRunner
from baffle.testing import tiny_config

KINDS = ("malformed", "bad_client_id", "unknown_sender", "duplicate", "bad_round", "stale_round", "future_round",
         "wrong_type", "wrong_dtype", "wrong_length", "non_finite", "magnitude", "bad_sample_count")


def bad_upload(kind: str, honest: Upload, rng: np.random.Generator) -> object:
    """A copy of `honest` broken the way `kind` names (one of KINDS)."""
    K, r = len(honest.loss_diffs), honest.round
    v = honest.loss_diffs
    return {
        "malformed": lambda: "garbage",
        "bad_client_id": lambda: dataclasses.replace(honest, client_id=-1),
        "unknown_sender": lambda: dataclasses.replace(honest, client_id=99),
        "duplicate": lambda: dataclasses.replace(honest, loss_diffs=(v * -100).astype(np.float32)),
        "bad_round": lambda: dataclasses.replace(honest, round=float(r)),
        "stale_round": lambda: dataclasses.replace(honest, round=r - 1),
        "future_round": lambda: dataclasses.replace(honest, round=r + 1),
        "wrong_type": lambda: dataclasses.replace(honest, loss_diffs=v.tolist()),
        "wrong_dtype": lambda: dataclasses.replace(honest, loss_diffs=v.astype(np.float64)),
        "wrong_length": lambda: dataclasses.replace(honest, loss_diffs=np.resize(v, K + int(rng.integers(1, 5)))),
        "non_finite": lambda: dataclasses.replace(honest, loss_diffs=np.where(rng.random(K) < 0.5, np.nan, v).astype(np.float32)),
        "magnitude": lambda: dataclasses.replace(honest, loss_diffs=np.full(K, 10 * MAX_ABS_LOSS_DIFF, np.float32)),
        "bad_sample_count": lambda: dataclasses.replace(honest, num_samples=int(rng.choice([0, -3, 10**6]))),
    }[kind]()


def snapshot(sim: Simulation) -> list[torch.Tensor]:
    """Every tensor of the server state a bad upload could corrupt: model, EMA shadow, optimizer state."""
    s = sim.fed.strategy.state_dict()
    out = list(s["model"].values()) + list(s["ema"]["shadow"].values())
    for st in s["optimizer"]["state"].values():
        out += [torch.as_tensor(v) for v in st.values()]
    return out


def audit(rounds: int, seed: int = 0) -> dict:
    """Run the twin federations for `rounds` rounds; the counts docs/robustness.md reports."""
    cfg = tiny_config(["data.eval_train_samples=100", f"run.rounds={rounds}"])
    a, b = Simulation(cfg, None, progress=False), Simulation(cfg, None, progress=False)
    rng = np.random.default_rng(seed)
    injected = {k: 0 for k in KINDS}
    corruptions, accepted_bad, skipped = 0, 0, 0
    for r in range(rounds):
        honest = RoundRunner.client_uploads(a.runner, list(range(4)), r)
        RoundRunner.client_uploads(b.runner, list(range(4)), r)  # keep B's samplers in step
        only_bad = r % 5 == 4
        before, after = [], []  # bad uploads arrive before the honest ones (so each fails its own check) ...
        for u in honest:
            kinds = [k for k in KINDS if not (only_bad and k == "duplicate")]
            for kind in rng.choice(kinds, size=3, replace=False):
                injected[kind] += 1
                # ... except duplicates, which by definition follow the upload they copy
                (after if kind == "duplicate" else before).append(bad_upload(str(kind), u, rng))
        feed_a = before if only_bad else before + honest + after
        feed_b = [] if only_bad else honest
        a.runner.client_uploads = lambda s, ri, f=feed_a: list(f)
        b.runner.client_uploads = lambda s, ri, f=feed_b: list(f)
        ra, rb = a.runner.run_round(r), b.runner.run_round(r)
        skipped += int(ra.skipped)
        accepted_bad += ra.accepted - rb.accepted
        if ra.skipped != rb.skipped or any(not torch.equal(x, y) for x, y in zip(snapshot(a), snapshot(b))):
            corruptions += 1
    return {
        "rounds": rounds,
        "injected_bad_uploads": sum(injected.values()),
        "injected_by_kind": injected,
        "rejected": a.fed.counters.rejected,
        "rejected_by_reason": a.fed.counters.rejected_by_reason,
        "every_rejection_has_its_own_reason": a.fed.counters.rejected_by_reason == {k: n for k, n in injected.items() if n},
        "accepted_bad_uploads": accepted_bad,
        "rounds_skipped_all_bad": skipped,
        "corrupted_rounds": corruptions,
    }
