"""The task the committed docs/flower/ measurements were made on, as Flower app overrides.

Until issue 12 the app's own defaults were a different task from `baffle run`'s (LeNet at 28x28, K=100,
batch 32, no warmup, no EMA, 30 rounds evaluated every 10, one thread). The app's defaults are now
`baffle run`'s (baffle.flower.config, generated into pyproject.toml); the measurement scripts pin the old
task explicitly so that re-running them reproduces what docs/flower/ reports.
"""

from __future__ import annotations

from typing import Any

DOCS_TASK: dict[str, Any] = {
    "num-server-rounds": 30,
    "run-eval-every": 10,
    "run-threads": 1,
    "data-image-size": 0,
    "data-test-subset": 2000,
    "model-name": "lenet",
    "estimator-k": 100,
    "federation-batch-size": 32,
    "optim-warmup": 0,
    "optim-ema-decay": 0.0,
}


def docs_base(**overrides: Any) -> dict[str, Any]:
    """The app defaults, the documented task on top, then ``overrides`` (kebab-case app keys)."""
    from baffle.flower.config import to_run_config

    return {**to_run_config(), **DOCS_TASK, **overrides}


def as_cli(config: dict[str, Any]) -> str:
    """``key=value`` pairs for `flwr run --run-config` (TOML values)."""
    from baffle.config.values import toml_value

    return " ".join(f"{k}={toml_value(v)}" for k, v in config.items())


def main(argv: list[str] | None = None) -> int:
    """Print DOCS_TASK as `flwr run --run-config` pairs, or with --set as flower_compare.py arguments."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if args == ["--set"]:
        print(" ".join(f"--set {pair}" for pair in as_cli(DOCS_TASK).split()))
    else:
        print(as_cli(DOCS_TASK))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
