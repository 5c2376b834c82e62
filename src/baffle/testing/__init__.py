"""Support shared by tests/ and benchmarks/: the tiny federation config and the harnesses both run.

Tests import from here rather than loading benchmark scripts by file path, and the benchmark scripts are thin
command lines over the same code, so the figures in docs/robustness.md and the tests exercise one harness:

- `tiny` / `tiny_config`: the tiny federation (synthetic data, MLP, 4 clients) every reliability test and
  harness uses, defined once;
- `baffle.testing.crash`: SIGKILL-and-resume trials of ``baffle run`` (tests/records/test_crash_resume.py,
  benchmarks/crash_trials.py);
- `baffle.testing.audit`: twin federations fed bad uploads (tests/server/test_validation.py,
  benchmarks/validation_audit.py).
"""

from __future__ import annotations

from baffle.config import Config

# Only the last two layers train: seeded directions over all 109k parameters would dominate the tests' time.
TINY = [
    "data.name=synthetic",
    "data.num_clients=4",
    "data.eval_train_samples=200",
    "model.name=mlp",
    "model.trainable=features.4.*,classifier.*",  # 8.9k of 109k parameters: cheap directions
    "estimator.K=16",
    "estimator.sigma=1e-2",
    "estimator.engine=loop",
    "federation.batch_size=16",
    "run.threads=1",
    "optim.ema_decay=0.9",
]


def tiny_config(overrides: list[str] = ()) -> Config:
    """The tiny federation plus `overrides` ("section.key=value", applied after it), validated."""
    cfg = Config()
    cfg.apply_overrides(TINY + list(overrides))
    return cfg.validate()


def tiny(rounds: int = 4, **extra) -> Config:
    """The tests' run of the tiny federation: `rounds` rounds, evaluation every 2, a checkpoint every round.

    `extra` are more overrides, keyed by dotted name: ``tiny(6, **{"federation.aggregator": "median"})``.
    """
    schedule = [f"run.rounds={rounds}", "run.eval_every=2", "run.checkpoint_every=1", "optim.lr=0.01"]
    return tiny_config(schedule + [f"{k}={v}" for k, v in extra.items()])
