"""The CIFAR-10 experiment files: experiments/cifar10.toml (the sweep) loads with its nine runs and runs a 1-round
smoke test of each CPU method on a tiny CIFAR-10-shaped ImageFolder archive, and experiments/cifar10_run.toml
(the one-``--config`` default run) is exactly cifar10_samples.toml's iid_B32_20k run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from baffle.config import Config
from baffle.data.fixtures import write_imagefolder_fixture
from baffle.data.registry import CIFAR10_CLASSES
from baffle.sweep import load_sweep, make_config, run_sweep

EXP = Path(__file__).resolve().parents[1] / "experiments"
SWEEP, RUN = EXP / "cifar10.toml", EXP / "cifar10_run.toml"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _spec(name: str, sweep_file: Path = SWEEP):
    sweep = load_sweep(sweep_file, out=Path("unused"))
    return next(s for s in sweep.runs if s.name == name)


def test_sweep_has_the_issue_14_grid():
    sweep = load_sweep(SWEEP, out=Path("unused"))
    cfgs = {s.name: make_config(s, []) for s in sweep.runs}
    cpu = {n: c for n, c in cfgs.items() if not n.startswith("gpu_")}
    assert sorted((c.data.partition, c.run.method) for c in cpu.values()) == sorted(
        (p, m) for p in ("iid", "dirichlet") for m in ("baffle", "fedsgd", "fedavg"))
    for c in cfgs.values():
        assert c.data.name == "cifar10_jpeg" and c.data.num_clients == 10 and c.data.image_size == 0
        assert c.data.partition == "iid" or c.data.alpha == 0.5
    assert {c.model.name for c in cpu.values()} == {"cnn_cifar_small"}
    assert {c.model.name for n, c in cfgs.items() if n.startswith("gpu_")} == {"wrn10_2"}
    # the twins share the model, data, batch and server optimizer with the forward-only run of their split
    for part in ("iid", "dir0.5"):
        fo, sgd = cfgs[f"{part}_baffle"], cfgs[f"{part}_fedsgd"]
        for key in ("federation.batch_size", "optim.name", "optim.lr", "optim.clip", "data.partition", "data.alpha"):
            assert fo.get(key) == sgd.get(key), key


def test_run_config_is_the_best_measured_forward_only_run():
    """`baffle run --config experiments/cifar10_run.toml` trains exactly what cifar10_samples.toml calls iid_B32_20k."""
    assert Config.load(RUN).to_dict() == make_config(_spec("iid_B32_20k", EXP / "cifar10_samples.toml"), []).to_dict()


def test_cifar10_sweep_smoke_run_on_fixture(tmp_path, monkeypatch):
    monkeypatch.setenv("BAFFLE_CACHE", str(tmp_path / "cache"))
    root = write_imagefolder_fixture(tmp_path / "cifar.tar.gz", classes=CIFAR10_CLASSES, n_train=4, n_test=1, size=32, top="cifar10")
    extra = [f"data.root={root}", "run.rounds=1", "run.eval_every=1", "estimator.K=2", "data.num_clients=2",
             "federation.batch_size=4", "federation.local_steps=2", "data.test_subset=10", "data.eval_train_samples=10",
             "run.threads=1", "estimator.engine=loop"]
    sweep = load_sweep(SWEEP, out=tmp_path / "out", extra=extra)
    rows = run_sweep(sweep, extra, progress=False, only="^iid_")
    done = {r["name"]: r["summary"] for r in rows if "summary" in r}
    assert sorted(done) == ["iid_baffle", "iid_fedavg", "iid_fedsgd"] and not any(r.get("error") for r in rows)
    s = done["iid_baffle"]
    assert s["model"] == "cnn_cifar_small" and s["dataset"] == "cifar10_jpeg"
    assert s["total_forward_passes"] == 2 * 3 and s["upload_bytes_per_client_per_round"] == 16 + 4 * 2
    assert done["iid_fedsgd"]["total_backward_passes"] > 0
    names = [r["name"] for r in json.loads((tmp_path / "out" / "results.json").read_text())["runs"]]
    assert set(names) == set(done)


def test_samples_sweep_differs_from_iid_baffle_only_in_recipe_and_keeps_samples_equal():
    """cifar10_samples.toml compares samples per pass at EQUAL minibatch images per client, on iid_baffle's model,
    data and estimator; only the optimizer/noise defaults of 2026-12-04, the batch and the rounds differ."""
    old = make_config(_spec("iid_baffle"), []).to_dict()
    sweep = load_sweep(EXP / "cifar10_samples.toml", out=Path("unused"))
    cfgs = {s.name: make_config(s, []) for s in sweep.runs}
    fo = [c for n, c in cfgs.items() if c.run.method == "baffle" and not n.startswith("screen_")]
    assert len({c.federation.batch_size * c.run.rounds for c in fo}) == 1 and len(fo) >= 2
    recipe = {"federation.batch_size", "run.rounds", "run.eval_every", "run.checkpoint_every", "optim.lr", "optim.betas", "estimator.noise"}
    assert {(c.data.partition, c.data.alpha) for c in fo} == {("iid", 0.5), ("dirichlet", 0.5)}
    for c in fo:
        allowed = recipe | ({"data.partition"} if c.data.partition == "dirichlet" else set())
        new = c.to_dict()
        changed = {f"{sec}.{k}" for sec in new for k in new[sec] if new[sec][k] != old[sec][k]}
        assert changed <= allowed, changed - allowed
    # the augmentation screen: two equal short runs that differ in data.augment alone
    on, off = cfgs["screen_aug_B128_1250"].to_dict(), cfgs["screen_noaug_B128_1250"].to_dict()
    assert {f"{sec}.{k}" for sec in on for k in on[sec] if on[sec][k] != off[sec][k]} == {"data.augment"}
    # the backprop twins share the batch and the server optimizer with the forward-only run at 32 samples per pass
    for twin in ("iid_fedsgd_B32", "iid_fedavg_B32"):
        for key in ("federation.batch_size", "optim.name", "optim.lr", "optim.betas", "optim.clip", "data.partition", "model.name"):
            assert cfgs[twin].get(key) == cfgs["iid_B32_20k"].get(key), (twin, key)


def _report():
    import importlib.util
    spec = importlib.util.spec_from_file_location("cifar_report", EXP / "cifar_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_keeps_rows_of_runs_not_on_this_machine_and_rereads_present_ones(tmp_path, monkeypatch):
    """Regenerating docs/cifar.md after one new run must not drop the hours-long runs made in another checkout,
    and a run directory present here replaces its old row."""
    report = _report()
    monkeypatch.setenv("BAFFLE_CACHE", str(tmp_path / "cache"))
    root = write_imagefolder_fixture(tmp_path / "cifar.tar.gz", classes=CIFAR10_CLASSES, n_train=4, n_test=1, size=32, top="cifar10")
    extra = [f"data.root={root}", "run.rounds=1", "run.eval_every=1", "estimator.K=2", "data.num_clients=2",
             "federation.batch_size=4", "data.test_subset=10", "data.eval_train_samples=10", "run.threads=1"]
    old_row = {"name": "iid_B32_20k", "method": "baffle", "model": "cnn_cifar_small", "partition": "iid", "alpha": 0.5,
               "batch": 32, "K": 20, "planned_rounds": 20000, "rounds": 100, "finished": False, "final_test_acc": 0.2,
               "best_test_acc": 0.2, "forward_passes_per_client": 1.0, "samples_per_client": 1.0,
               "upload_bytes_per_client_per_round": 96, "client_step_peak_mib": None, "wall_s": 1.0,
               "history": [{"round": 100, "test_acc": 0.2, "client_forward_passes": 1.0, "wall_s": 1.0}]}
    previous = {("experiments/cifar10.toml", "iid_fedsgd"): {**old_row, "name": "iid_fedsgd", "method": "fedsgd", "best_test_acc": 0.6},
                ("experiments/cifar10_samples.toml", "iid_B32_20k"): old_row,
                ("experiments/cifar10_samples.toml", "screen_noaug_B128_1250"): {**old_row, "name": "screen_noaug_B128_1250",
                                                                                 "augment": "none", "best_test_acc": 0.9}}
    rows = report.collect(tmp_path / "none", previous)
    assert [(r["sweep"], r["name"], r["kept"]) for r in rows] == [
        ("experiments/cifar10.toml", "iid_fedsgd", True), ("experiments/cifar10_samples.toml", "iid_B32_20k", True),
        ("experiments/cifar10_samples.toml", "screen_noaug_B128_1250", True)]
    # the goal rows, one per model: the best IID forward-only run (screens excluded), whichever file it came from;
    # rf_white has no run in ``previous``
    assert report.goals(rows)[0][1] == "20.00%" and report.goals(rows)[1][1] == "not run"
    # a run made here replaces its kept row (configs with the tiny-run overrides, as `baffle sweep --set` would make them)
    monkeypatch.setattr(report, "make_config", lambda spec, _extra: make_config(spec, extra))
    monkeypatch.setattr(report, "load_sweep", lambda path, out=None: load_sweep(path, out=out, extra=extra))
    sweep = report.load_sweep(EXP / "cifar10_samples.toml", out=tmp_path / "results" / "cifar10_samples")
    run_sweep(sweep, extra, progress=False, only="^iid_B32_20k$")
    rows = report.collect(tmp_path, previous)
    assert [(r["name"], r.get("kept", False)) for r in rows] == [("iid_fedsgd", True), ("iid_B32_20k", False), ("screen_noaug_B128_1250", True)]
    assert rows[1]["rounds"] == 1 and rows[1]["finished"] and rows[1]["batch"] == 4


def test_rf_sweep_twins_share_the_features_and_the_server_optimizer():
    """experiments/cifar10_rf.toml: the forward-only runs and their twins train the same classifier over the same
    frozen rf_white features (same model, trainable subset, data, batch, server optimizer); Dirichlet differs from IID
    only in the partition; no augmentation anywhere (the feature cache needs the same rows every round)."""
    sweep = load_sweep(EXP / "cifar10_rf.toml")
    cfgs = {s.name: make_config(s, []) for s in sweep.runs}
    assert set(cfgs) == {"iid_rf", "iid_rf_lr0.001", "iid_rf_lr0.001_seed1", "iid_rf_lr0.001_seed2", "dir0.5_rf",
                         "dir0.5_rf_lr0.001", "dir0.5_rf_lr0.001_seed1", "dir0.5_rf_lr0.001_seed2", "iid_rf_fedsgd",
                         "dir0.5_rf_fedsgd", "iid_rf_lr0.001_fedsgd", "dir0.5_rf_lr0.001_fedsgd", "iid_rf_fedavg"}
    seeds = {name: cfgs.pop(name) for name in ("iid_rf_lr0.001_seed1", "iid_rf_lr0.001_seed2", "dir0.5_rf_lr0.001_seed1",
                                               "dir0.5_rf_lr0.001_seed2")}
    base = cfgs["iid_rf"]
    assert base.model.name == "rf_white" and base.model.trainable == ["classifier.*"] and base.estimator.K == 1000
    for name, c in cfgs.items():
        assert c.data.augment == "none" and c.data.test_subset == 0, name
        for key in ("model.name", "model.trainable", "data.name", "federation.batch_size", "optim.name", "optim.lr",
                    "optim.betas", "optim.clip", "optim.weight_decay", "run.seed"):
            if "_lr0.001" in name and key == "optim.lr":
                continue
            assert c.get(key) == base.get(key), (name, key)
    a, b = base.to_dict(), cfgs["dir0.5_rf"].to_dict()
    assert {f"{sec}.{k}" for sec in a for k in a[sec] if a[sec][k] != b[sec][k]} == {"data.partition"}
    c = cfgs["dir0.5_rf_lr0.001"].to_dict()
    d = cfgs["iid_rf_lr0.001"].to_dict()
    assert {f"{sec}.{k}" for sec in c for k in c[sec] if c[sec][k] != d[sec][k]} == {"data.partition"}
    assert cfgs["dir0.5_rf"].data.alpha == 0.5 and cfgs["iid_rf_fedsgd"].run.rounds == base.run.rounds
    # the matched twins: FedSGD where the forward-only recipe is, exact gradients for the estimate
    for fo, twin in (("iid_rf_lr0.001", "iid_rf_lr0.001_fedsgd"), ("dir0.5_rf_lr0.001", "dir0.5_rf_lr0.001_fedsgd")):
        e, f = cfgs[fo].to_dict(), cfgs[twin].to_dict()
        assert {f"{sec}.{k}" for sec in e for k in e[sec] if e[sec][k] != f[sec][k]} == {"run.method"}, twin
    # the headline's other seeds: the IID recipe exactly, but for run.seed (which also draws the random filters)
    for name, cfg in seeds.items():
        e, same = cfg.to_dict(), cfgs[name.rsplit("_seed", 1)[0]].to_dict()
        assert {f"{sec}.{k}" for sec in e for k in e[sec] if e[sec][k] != same[sec][k]} == {"run.seed"}, name
        assert cfg.run.seed == int(name[-1])


def test_report_goal_row_over_seeds_is_judged_on_the_mean_final_accuracy():
    """A recipe run at several seeds (``<name>_seedN``) gives the goal row their mean ± std, and the verdict follows the
    mean final accuracy, not the luckiest seed's best; the recipe with the higher mean wins over a single lucky run."""
    report = _report()

    def row(name, final, best, finished=True):
        return {"name": name, "method": "baffle", "model": "rf_white", "partition": "iid", "finished": finished,
                "final_test_acc": final, "best_test_acc": best, "rounds": 3000, "planned_rounds": 3000}

    seeds = [row("iid_a", 0.66, 0.66), row("iid_a_seed1", 0.64, 0.645), row("iid_a_seed2", 0.645, 0.65)]
    rows = seeds + [row("iid_b", 0.655, 0.655)]
    assert [r["name"] for r in report.best_iid_forward_only(rows, "rf_white")] == ["iid_b"]
    goal = next(g for g in report.goals(rows) if "rf_white" in g[0])
    assert goal[1] == "65.50%" and goal[3] == "yes"  # iid_b: one run, judged on its best
    rows = seeds + [row("iid_b", 0.64, 0.645)]
    goal = next(g for g in report.goals(rows) if "rf_white" in g[0])
    assert goal[1].startswith("64.83% ± 1.04 final, 65.17% ± 0.76 best (3 seeds") and goal[3].startswith("**no**")
    assert "`iid_a_seed2`" in goal[2]
    # an unfinished seed does not count towards the mean
    rows = [seeds[0], row("iid_a_seed1", 0.645, 0.65), row("iid_a_seed2", 0.50, 0.50, finished=False)]
    goal = next(g for g in report.goals(rows) if "rf_white" in g[0])
    assert "(2 seeds" in goal[1] and goal[3] == "yes"


def test_report_dirichlet_gap_over_seeds_compares_the_means():
    """With 2+ finished seeds on both sides, the Dirichlet goal compares the recipes' mean final accuracies; with one,
    seed 0's Dirichlet run against seed 0's IID run (best accuracy)."""
    report = _report()

    def row(name, final, partition="iid"):
        return {"name": name, "method": "baffle", "model": "rf_white", "partition": partition, "finished": True,
                "final_test_acc": final, "best_test_acc": final + 0.01, "rounds": 3000, "planned_rounds": 3000}

    iid = [row("iid_a", 0.66), row("iid_a_seed1", 0.65)]
    dirichlet = [row("dir0.5_a", 0.60, "dirichlet"), row("dir0.5_a_seed1", 0.64, "dirichlet")]
    goal = [g for g in report.goals(iid + dirichlet) if g[0].startswith("Dirichlet")]
    assert len(goal) == 1 and goal[0][1].startswith("+3.5 points (mean final: IID 65.50%, 2 seeds; Dirichlet 62.00%, 2 seeds")
    assert goal[0][3] == "**no**"
    goal = [g for g in report.goals(iid + dirichlet[:1]) if g[0].startswith("Dirichlet")]
    assert goal[0][1] == "+6.0 points" and goal[0][3] == "**no**"
    goal = [g for g in report.goals(iid + [row("dir0.5_a", 0.64, "dirichlet")]) if g[0].startswith("Dirichlet")]
    assert goal[0][1] == "+2.0 points" and goal[0][3] == "yes"
