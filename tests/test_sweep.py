"""baffle sweep: a tiny grid produces its table and plots, finished runs are reused, bad files are refused."""

import json

import pytest
import torch

from baffle.cli import main
from baffle.sim.loop import Simulation
from baffle.sweep import SweepError, load_sweep, run_sweep

TINY = """
out = "{out}"
title = "tiny"

[base]
data.name = "synthetic"
data.num_clients = 3
data.eval_train_samples = 100
data.train_subset = 300
data.test_subset = 100
data.image_size = 8
run.threads = 1
model.name = "mlp"
estimator.engine = "loop"
estimator.sigma = 1e-2
federation.batch_size = 8
run.checkpoint_every = 1
optim.lr = 0.01
sweep.forward_budget = 12
sweep.evals = 2

[grid]
"estimator.K" = [2, 5]

[[runs]]
name = "fwd"
estimator.scheme = "forward"

[[runs]]
name = "bp"
run.method = "fedsgd"
run.rounds = 2
"""


@pytest.fixture(autouse=True)
def _restore_threads():
    """The sweeps set run.threads=1 (fair under a loaded CI machine); give the other tests their threads back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


class CountingSimulation(Simulation):
    calls: list = []

    def __init__(self, cfg, out, progress=True):
        CountingSimulation.calls.append(str(out))
        super().__init__(cfg, out, progress=False)


def _write(tmp_path, text=TINY):
    f = tmp_path / "s.toml"
    f.write_text(text.format(out=(tmp_path / "out").as_posix()))
    return f


def test_tiny_grid_table_plots_and_reuse(tmp_path):
    sweep = load_sweep(_write(tmp_path))
    names = [r.name for r in sweep.runs]
    assert names == ["fwd__K=2", "fwd__K=5", "bp__K=2", "bp__K=5"]
    CountingSimulation.calls = []
    rows = run_sweep(sweep, progress=False, simulate=CountingSimulation)
    assert len(CountingSimulation.calls) == 4 and not any(r.get("error") for r in rows)
    out = tmp_path / "out"
    for f in ("results.md", "results.json", "acc_vs_rounds.png", "acc_vs_forward_passes.png"):
        assert (out / f).stat().st_size > 0, f
    table = (out / "results.md").read_text()
    for name in names:
        assert f"| {name} |" in table
    res = {r["name"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    # equal forward budget: K=2 forward -> 3 fwd/round -> 4 rounds; K=5 -> 6 fwd/round -> 2 rounds
    assert res["fwd__K=2"]["summary"]["rounds"] == 4 and res["fwd__K=5"]["summary"]["rounds"] == 2
    assert res["fwd__K=2"]["summary"]["total_forward_passes"] == 4 * 3 * 3
    assert res["fwd__K=2"]["summary"]["upload_bytes_per_client_per_round"] == 16 + 4 * 2
    assert res["bp__K=2"]["summary"]["method"] == "fedsgd" and res["bp__K=2"]["summary"]["rounds"] == 2
    assert res["fwd__K=2"]["varied"] == {"estimator.scheme": "forward", "estimator.K": 2}

    # a second invocation recomputes nothing and leaves the finished runs' files untouched
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    CountingSimulation.calls = []
    rows2 = run_sweep(load_sweep(_write(tmp_path)), progress=False, simulate=CountingSimulation)
    assert CountingSimulation.calls == []
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")} == mtimes
    assert [r["summary"]["final_test_acc"] for r in rows2] == [r["summary"]["final_test_acc"] for r in rows]


def test_interrupted_run_resumes_from_checkpoint(tmp_path):
    sweep = load_sweep(_write(tmp_path))
    run_sweep(sweep, progress=False, only="^fwd__K=2$", simulate=CountingSimulation)
    run_dir = tmp_path / "out" / "fwd__K=2"
    full = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").unlink()  # as if killed after its last checkpoint
    resumed = []

    class Spy(Simulation):
        def resume(self):
            resumed.append(True)
            super().resume()

    run_sweep(sweep, progress=False, only="^fwd__K=2$", simulate=Spy)
    assert resumed == [True]
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["final_test_acc"] == full["final_test_acc"]
    assert again["total_forward_passes"] == full["total_forward_passes"]


def test_changed_config_is_refused_unless_forced(tmp_path):
    f = _write(tmp_path)
    run_sweep(load_sweep(f), progress=False, only="^bp__K=2$")
    f.write_text(f.read_text().replace("run.rounds = 2", "run.rounds = 1"))
    with pytest.raises(SweepError, match="different config"):
        run_sweep(load_sweep(f), progress=False, only="^bp__K=2$")
    rows = run_sweep(load_sweep(f), progress=False, only="^bp__K=2$", force=True)
    assert [r["summary"]["rounds"] for r in rows if r["name"] == "bp__K=2"] == [1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("[base]\nestimator.K = 5\n", "needs a top-level `out"),
        ('out = "x"\n[grid]\n"estimator.K" = 5\n', "non-empty list"),
        ('out = "x"\n[base]\nestimator.KK = 5\n', "unknown config key 'estimator.KK'"),
        ('out = "x"\n[base]\nestimator.K = -1\n', "estimator.K must be a positive integer"),
        ('out = "x"\n[[runs]]\nrun.method = "fedsgd"\n', "needs a name"),
        ('out = "x"\nouts = 1\n', "unknown top-level key"),
        ('out = "x"\n[base]\nsweep.budget = 3\n', "unknown sweep option"),
        ('out = "x"\n[[runs]]\nname = "a"\n[[runs]]\nname = "a"\n', "share the directory"),
        ('out = "x"\n[base\n', "not valid TOML"),
    ],
)
def test_bad_sweep_file_gives_clear_error(tmp_path, text, message):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(SweepError, match=message):
        load_sweep(f)


def test_cli_dry_run_and_error_exit(tmp_path, capsys):
    f = _write(tmp_path)
    assert main(["sweep", str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and "fwd__K=2: baffle, 4 rounds, 36 client forward passes [fresh]" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "x"\n[base]\nestimator.K = 0\n')
    assert main(["sweep", str(bad)]) == 2
    assert "estimator.K must be a positive integer" in capsys.readouterr().err


def test_a_key_added_to_baffle_after_a_run_does_not_make_it_a_different_run(tmp_path):
    """A finished run whose config.toml predates a new key (absent there, at its default now) is reused."""
    from baffle.sweep import run_status

    from baffle.testing import tiny

    cfg = tiny(1)
    run = tmp_path / "run"
    run.mkdir()
    text = cfg.to_toml()
    (run / "config.toml").write_text("\n".join(ln for ln in text.splitlines() if not ln.startswith("trust_decay")) + "\n")
    (run / "summary.json").write_text("{}")
    assert "trust_decay" in text and run_status(run, cfg) == "done"
    cfg.federation.trust_decay = 0.5  # a real difference is still a conflict
    assert run_status(run, cfg) == "conflict"


def test_set_cannot_override_a_grid_key_and_shows_what_ran_for_a_runs_key(tmp_path):
    """`--set estimator.K=9` on a grid over K would run K=9 under the names `fwd__K=2` and `fwd__K=5`: refused.
    A key that [[runs]] set may be overridden for every run (a shorter smoke run), and the table's column for
    it then shows the value that ran, not the file's."""
    f = _write(tmp_path)
    with pytest.raises(SweepError, match=r"--set estimator.K: the sweep's \[grid\] varies estimator.K"):
        load_sweep(f, extra=["estimator.K=9"])
    sweep = load_sweep(f, extra=["run.rounds=3", "estimator.sigma=0.02"])
    assert [r.name for r in sweep.runs] == ["fwd__K=2", "fwd__K=5", "bp__K=2", "bp__K=5"]
    bp = next(r for r in sweep.runs if r.name == "bp__K=2")
    assert bp.varied["run.rounds"] == 3 and bp.overrides["run.rounds"] == 2


def test_dry_run_piped_into_head_ends_quietly(tmp_path):
    """`baffle sweep FILE --dry-run | head -1` (the reader closes the pipe early): exit 0, nothing on stderr."""
    import subprocess
    import sys

    f = _write(tmp_path, TINY.replace('"estimator.K" = [2, 5]', '"run.seed" = [' + ", ".join(map(str, range(1500))) + "]"))
    p = subprocess.Popen([sys.executable, "-m", "baffle.cli", "sweep", str(f), "--dry-run"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().startswith(b"3000 runs")
    p.stdout.close()  # more than a pipe buffer of lines is still to come
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0 and b"Broken pipe" not in err and err == b""
