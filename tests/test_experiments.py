"""The experiment sweep files behind docs/results.md load and validate, and the CIFAR-10 WRN config runs a
1-round smoke test on the CIFAR fixture (no CIFAR data ships with baffle)."""

import json
from pathlib import Path

import pytest
import torch

from baffle.data import write_cifar_fixture
from baffle.models import build_model
from baffle.sweep import load_sweep, make_config, run_sweep

EXP = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name, n_runs", [("main_table", 24), ("k_sweep", 10), ("ablations", 5), ("beyond_paper", 11), ("finetune", 6), ("goals", 3), ("lr_sweep", 4), ("cifar10_wrn", 2)])
def test_experiment_files_load_and_validate(tmp_path, name, n_runs):
    extra = []
    if name == "finetune":  # model.init must exist: a LeNet state_dict for the 5-way task
        ckpt = tmp_path / "init.pt"
        torch.save(build_model("lenet", num_classes=5).state_dict(), ckpt)
        extra = [f"model.init={ckpt}"]
    sweep = load_sweep(EXP / f"{name}.toml", out=tmp_path / "out", extra=extra)
    assert len(sweep.runs) == n_runs
    if name in ("k_sweep", "beyond_paper"):  # equal forward passes per client, whatever K and scheme
        budgets = []
        for spec in sweep.runs:
            cfg = make_config(spec, extra)
            per_round = cfg.estimator.K + 1 if cfg.estimator.scheme == "forward" else 2 * cfg.estimator.K
            budgets.append(cfg.run.rounds * per_round)
        assert max(budgets) / min(budgets) < 1.15, budgets


def test_cifar10_wrn_config_smoke_run_on_fixture(tmp_path):
    root = write_cifar_fixture(tmp_path / "cifar", kind="cifar10", n_train=40, n_test=10)
    extra = [f"data.root={root}", "run.rounds=1", "estimator.K=2", "data.num_clients=2", "federation.batch_size=4",
             "data.test_subset=10", "data.eval_train_samples=10", "run.threads=1", "estimator.engine=loop"]
    sweep = load_sweep(EXP / "cifar10_wrn.toml", out=tmp_path / "out", extra=extra)
    rows = run_sweep(sweep, extra, progress=False, only="method=baffle")
    done = [r for r in rows if "summary" in r]
    assert [r["name"] for r in done] == ["method=baffle"] and not any(r.get("error") for r in rows)
    s = done[0]["summary"]
    assert s["model"] == "wrn10_2" and s["dataset"] == "cifar10" and s["total_forward_passes"] == 2 * 3
    assert json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]["name"] == "method=baffle"
