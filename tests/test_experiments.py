"""The experiment sweep files behind docs/results.md load and validate, and the CIFAR-10 WRN config runs a
1-round smoke test on the CIFAR fixture (no CIFAR data ships with baffle)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from baffle.data.fixtures import write_cifar_fixture
from baffle.models import build_model
from baffle.sweep import load_sweep, make_config, run_sweep

EXP = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name, n_runs", [("main_table", 24), ("k_sweep", 10), ("ablations", 5), ("beyond_paper", 11), ("finetune", 6), ("goals", 4), ("lr_sweep", 4), ("cifar10_wrn", 2), ("text_subsets", 14),
                                          ("text_subsets_dirichlet", 7)])
def test_experiment_files_load_and_validate(tmp_path, name, n_runs):
    extra = []
    if name == "finetune":  # model.init must exist: a LeNet state_dict for the 5-way task
        ckpt = tmp_path / "init.pt"
        torch.save(build_model("lenet", num_classes=5).state_dict(), ckpt)
        extra = [f"model.init={ckpt}"]
    if name.startswith("text_subsets"):  # model.init is written by experiments/text_subsets.py init; validation needs a file
        (tmp_path / "probe_init.safetensors").write_bytes(b"")
        extra = [f"model.init={tmp_path / 'probe_init.safetensors'}"]
    sweep = load_sweep(EXP / f"{name}.toml", out=tmp_path / "out", extra=extra)
    assert len(sweep.runs) == n_runs
    if name in ("k_sweep", "beyond_paper"):  # equal forward passes per client, whatever K and scheme
        budgets = []
        for spec in sweep.runs:
            cfg = make_config(spec, extra)
            per_round = cfg.estimator.K + 1 if cfg.estimator.scheme == "forward" else 2 * cfg.estimator.K
            budgets.append(cfg.run.rounds * per_round)
        assert max(budgets) / min(budgets) < 1.15, budgets
    if name.startswith("text_subsets"):  # each forward-only run has a backprop twin differing only in the method
        cfgs = {s.name: make_config(s, extra).to_dict() for s in sweep.runs}
        for fo in (n for n in cfgs if n.startswith("fo_")):
            twin = dict(cfgs["bp_" + fo[3:]], run=dict(cfgs["bp_" + fo[3:]]["run"], method="baffle"))
            assert twin == cfgs[fo], fo
        for fa in (n for n in cfgs if n.startswith("fa_")):  # FedAvg twins: same subset, data and minibatches
            a, b = cfgs[fa], cfgs["bp_" + fa[3:]]
            assert (a["run"]["method"], a["model"], a["data"]) == ("fedavg", b["model"], b["data"]), fa
            assert a["run"]["rounds"] * a["federation"]["local_steps"] == b["run"]["rounds"], fa
            assert a["federation"]["batch_size"] == b["federation"]["batch_size"], fa
    if name == "text_subsets_dirichlet":  # the domain sweep's runs on another federation, nothing else changed
        domain = load_sweep(EXP / "text_subsets.toml", out=tmp_path / "out2", extra=extra)
        other = {s.name: make_config(s, extra).to_dict() for s in domain.runs}
        for run, c in cfgs.items():
            d = other[run]
            assert (c["data"]["partition"], c["data"]["num_clients"], c["data"]["alpha"]) == ("dirichlet", 20, 0.5)
            assert c["federation"]["clients_per_round"] == 4
            for section in c:
                if section not in ("data", "federation"):
                    assert c[section] == d[section], (run, section)
            strip = lambda x, keys: {k: v for k, v in x.items() if k not in keys}  # noqa: E731
            assert strip(c["data"], ("partition", "num_clients", "alpha")) == strip(d["data"], ("partition", "num_clients", "alpha"))
            assert strip(c["federation"], ("clients_per_round",)) == strip(d["federation"], ("clients_per_round",))


def test_text_seed_runs_are_the_domain_sweeps_runs_at_another_seed(tmp_path):
    """text_subsets_seeds.toml: seeds 1 and 2 of the domain sweep's head / LoRA / lnbias pairs, each from its own
    seed's probe (experiments/text_subsets.py init --seed S), every other setting the domain sweep's."""
    seeds = load_sweep(EXP / "text_subsets_seeds.toml", out=tmp_path / "a", extra=["model.init="])
    domain = {s.name: make_config(s, ["model.init="]).to_dict()
              for s in load_sweep(EXP / "text_subsets.toml", out=tmp_path / "b", extra=["model.init="]).runs}
    assert sorted(s.name for s in seeds.runs) == sorted(f"{m}_{sub}_seed{k}" for m in ("fo", "bp")
                                                        for sub in ("head", "lora", "lnbias") for k in (1, 2))
    for spec in seeds.runs:
        seed = int(spec.name[-1])
        assert spec.overrides["model.init"] == f"results/text_subsets/probe_init_seed{seed}.safetensors"
        got = make_config(spec, ["model.init="]).to_dict()
        want = domain[spec.name.rsplit("_", 1)[0]]
        assert got["run"] == dict(want["run"], seed=seed), spec.name
        assert {k: v for k, v in got.items() if k != "run"} == {k: v for k, v in want.items() if k != "run"}, spec.name


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


def _row(name, accs, passes_per_eval, samples_per_pass=8):
    history = [{"round": i + 1, "test_acc": a, "total_forward_passes": (i + 1) * passes_per_eval,
                "total_forward_samples": (i + 1) * passes_per_eval * samples_per_pass, "wall_s": 1.0} for i, a in enumerate(accs)]
    summary = {"final_test_acc": accs[-1], "best_test_acc": max(accs), "rounds": len(accs),
               "total_forward_passes": len(accs) * passes_per_eval, "method": "baffle",
               "upload_bytes_per_client_per_round": 96, "wall_s": 1.0}
    return {"name": name, "varied": {}, "summary": summary, "history": history, "client_forward_passes_per_round": passes_per_eval}


def test_results_doc_judges_goals_and_forward_pass_fractions(tmp_path):
    """docs/results.md's verdicts are computed, not typed: a goal is met only at or above its threshold, the
    longest-budget run is preferred, and 'passes to reach the paper's accuracy' reads the curves. Runs the
    script as run_all.sh does, on sweep outputs written here."""
    sweeps = {
        "main_table": [_row("iid_baffle__name=mnist", [0.5, 0.96], 10), _row("dir0.5_baffle__name=mnist", [0.9, 0.951], 10)],
        "goals": [_row("mnist_iid", [0.9, 0.972], 10)],
        "beyond_paper": [_row("paper", [0.1, 0.2, 0.3, 0.4], 100, 32), _row("fast", [0.45, 0.6], 50)],
    }
    for name, rows in sweeps.items():
        (tmp_path / "results" / name).mkdir(parents=True)
        (tmp_path / "results" / name / "results.json").write_text(json.dumps({"varied_keys": [], "runs": rows}))
    subprocess.run([sys.executable, str(EXP / "make_results.py"), "--results", "results", "--doc", "docs/results.md"],
                   cwd=tmp_path, check=True, capture_output=True)
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "`goals/mnist_iid` | 97.20% / 97.20% | 2 | yes" in text  # the long run wins over the main table's
    assert "`main_table/dir0.5_baffle__name=mnist` | 95.10% / 95.10% | 2 | yes" in text
    assert "Fashion-MNIST, IID, forward-only: >= 85% | not run |  |  | no" in text
    assert "| paper | 40.00 | 400 | 1.00 | 1.000 |" in text
    assert "| fast | 60.00 | 50 | 0.12 | 0.031 |" in text  # 50/400 passes, 50*8 / (400*32) samples
