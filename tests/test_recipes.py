"""The one-``--config`` recipes (issue 16's MNIST and Fashion-MNIST goals, issue 14's CIFAR-10 random features) train exactly the sweep runs whose numbers the docs quote."""

from __future__ import annotations

from pathlib import Path

import pytest

from baffle.config import Config
from baffle.sweep import load_sweep, make_config

EXP = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("recipe, sweep, run", [
    ("mnist_97.toml", "pass_budget.toml", "B64__seed=0"),
    ("mnist_98.toml", "pass_budget_98.toml", "B128_10k__seed=0"),
    ("fashion_rf_run.toml", "fashion_rf_k1000.toml", "baffle_3k__seed=0"),
    ("cifar10_rf_run.toml", "cifar10_rf.toml", "iid_rf_lr0.001"),
])
def test_recipe_is_the_sweep_run(recipe, sweep, run):
    spec = next(s for s in load_sweep(EXP / sweep, out=Path("unused")).runs if s.name == run)
    assert Config.load(EXP / recipe).to_dict() == make_config(spec, []).to_dict()
