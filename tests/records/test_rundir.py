"""Run directories never mix and ``--resume`` never deletes history (issue 17 item 2)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from baffle import cli
from baffle.config import Config
from baffle.records import rundir
from baffle.testing import tiny

FLAGS = ["--no-progress", "--no-preflight"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-round tiny run (checkpoint every round, evaluations at 2 and 4) and its config file."""
    d = tmp_path_factory.mktemp("rd")
    cfg_file = d / "tiny.toml"
    cfg_file.write_text(tiny(4).to_toml())
    assert cli.main(["run", "--config", str(cfg_file), "--out", str(d / "run"), *FLAGS]) == 0
    return d / "run", cfg_file


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _fails(capsys, argv: list[str], *fragments: str) -> str:
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err


def _rounds(run: Path) -> list[int]:
    return [json.loads(ln)["round"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_out_into_an_existing_run_is_refused_and_nothing_changes(finished, tmp_path, capsys):
    run, cfg = finished
    run = _copy(run, tmp_path / "run")
    before = _snapshot(run)
    _fails(capsys, ["run", "--config", str(cfg), "--out", str(run), *FLAGS], "already holds a run", "--resume", "--overwrite")
    assert _snapshot(run) == before


def test_overwrite_clears_the_old_run_first(finished, tmp_path, capsys):
    run, cfg = finished
    run = _copy(run, tmp_path / "run")
    old_key = (run / ".baffle-key").read_bytes()
    assert cli.main(["run", "--config", str(cfg), "--out", str(run), "--overwrite", "--set", "run.rounds=2", *FLAGS]) == 0
    assert _rounds(run) == [2]  # not [2, 4, 2]: the old history went first
    assert json.loads((run / "summary.json").read_text())["rounds"] == 2
    assert (run / ".baffle-key").read_bytes() != old_key


def test_overwrite_never_deletes_files_baffle_did_not_write(finished, tmp_path, capsys):
    run, cfg = finished
    run = _copy(run, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    before = _snapshot(run)
    _fails(capsys, ["run", "--config", str(cfg), "--out", str(run), "--overwrite", *FLAGS], "notes.txt", "not deleting")
    assert _snapshot(run) == before
    other = tmp_path / "home"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    _fails(capsys, ["run", "--config", str(cfg), "--out", str(other), "--overwrite", *FLAGS], "not empty")
    assert (other / "thesis.tex").read_text() == "x"


def test_out_on_a_regular_file_and_an_empty_dir(finished, tmp_path, capsys):
    _, cfg = finished
    f = tmp_path / "file"
    f.write_text("x")
    _fails(capsys, ["run", "--config", str(cfg), "--out", str(f), *FLAGS], str(f), "not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".config.toml.tmp-123").write_text("debris of a killed writer")
    assert rundir.prepare_fresh(empty) == empty


def test_resume_of_a_finished_run_without_its_checkpoint_is_an_error_not_a_restart(finished, tmp_path, capsys):
    run, _ = finished
    run = _copy(run, tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    before = _snapshot(run)
    _fails(capsys, ["run", "--resume", str(run), *FLAGS], "checkpoint.pt is missing")
    assert _snapshot(run) == before
    (run / "summary.json").unlink()  # killed later on: metrics reach round 4, no checkpoint
    _fails(capsys, ["run", "--resume", str(run), *FLAGS], "reaches round 4")
    assert _rounds(run) == [2, 4]


def test_resume_before_the_first_checkpoint_starts_over(tmp_path, capsys):
    cfg = tiny(4, **{"run.checkpoint_every": 2})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(cfg.to_toml())
    (run / "metrics.jsonl").write_text(json.dumps({"round": 2}) + "\n")  # written just before the first checkpoint
    assert cli.main(["run", "--resume", str(run), *FLAGS]) == 0
    assert _rounds(run) == [2, 4]


def test_checkpoint_that_is_a_directory(finished, tmp_path, capsys):
    run, _ = finished
    run = _copy(run, tmp_path / "run")
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").mkdir()
    _fails(capsys, ["run", "--resume", str(run), *FLAGS], "checkpoint.pt", "directory")


def test_edited_config_is_refused_naming_the_keys(finished, tmp_path, capsys):
    run, _ = finished
    run = _copy(run, tmp_path / "run")
    text = (run / "config.toml").read_text()
    (run / "config.toml").write_text(text.replace("K = 16", "K = 50").replace("lr = 0.01", "lr = 0.02"))
    before = _snapshot(run)
    _fails(capsys, ["run", "--resume", str(run), *FLAGS], "estimator.K: 16 in the checkpoint, 50 now", "optim.lr")
    assert _snapshot(run) == before
    (run / "config.toml").write_text(text)
    _fails(capsys, ["run", "--resume", str(run), "--set", "estimator.K=50", *FLAGS], "estimator.K", "run.rounds")


def test_more_rounds_is_a_declared_safe_change(finished, tmp_path, capsys):
    run, _ = finished
    run = _copy(run, tmp_path / "run")
    assert cli.main(["run", "--resume", str(run), "--set", "run.rounds=6", *FLAGS]) == 0
    assert _rounds(run) == [2, 4, 6]
    assert "rounds = 6" in (run / "config.toml").read_text()
    assert "resuming" in capsys.readouterr().err
    _fails(capsys, ["run", "--resume", str(run), "--set", "run.rounds=3", *FLAGS], "before the checkpoint's round 6")


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[-1]] if value else [1]
    raise AssertionError(value)


def test_every_config_key_changed_on_resume_is_refused_unless_declared_safe(finished, tmp_path):
    """The 100% figure: each key of the config, changed alone, is refused by name or accepted as declared."""
    run, _ = finished
    base = Config.load(run / "config.toml")
    refused = accepted = 0
    for section in Config.sections():
        for f in dataclasses.fields(getattr(base, section)):
            key = f"{section}.{f.name}"
            cfg = Config.load(run / "config.toml")
            value = _changed(getattr(getattr(cfg, section), f.name))
            if key == "model.trainable":
                value = ["classifier.*"]
            setattr(getattr(cfg, section), f.name, value)
            d = tmp_path / key
            d.mkdir()
            for name in ("checkpoint.pt", ".baffle-key"):
                (d / name).write_bytes((run / name).read_bytes())
            (d / "config.toml").write_text(cfg.to_toml())
            if key in rundir.SAFE_RESUME_CHANGES:
                rundir.prepare_resume(d)
                accepted += 1
            else:
                with pytest.raises(rundir.RunDirError, match=key.replace(".", r"\.")):
                    rundir.prepare_resume(d)
                refused += 1
    assert accepted == len(rundir.SAFE_RESUME_CHANGES) and refused > 40
    print(f"resume with one changed key: {refused} refused by name, {accepted} accepted as declared safe")


def test_a_key_newer_than_the_checkpoint_at_its_default_is_not_a_change():
    cfg = tiny(2)
    saved = cfg.to_dict()
    del saved["estimator"]["K"]  # as if estimator.K had been added to baffle after this checkpoint
    assert rundir.config_changes(saved, cfg) == {"estimator.K": (rundir._ABSENT, 16)}  # not at its default: a change
    cfg.estimator.K = Config().estimator.K
    assert rundir.config_changes(saved, cfg) == {}


def test_a_run_made_before_estimator_noise_existed_resumes_with_v1(tmp_path):
    """The key came in with spec v2, when v1 was the only spec; its default is now v2-gauss. A run directory without
    the key ran with v1: resuming it must keep v1, and a checkpoint without it must not match v2-gauss."""
    assert Config().estimator.noise != "v1"  # otherwise this test checks nothing
    d = tmp_path / "old"
    d.mkdir()
    text = tiny(2).to_toml()
    old = "\n".join(ln for ln in text.splitlines() if not ln.startswith("noise ="))
    assert old != text and "noise =" not in old
    (d / "config.toml").write_text(old)
    assert rundir.prepare_resume(d).cfg.estimator.noise == "v1"
    saved = tiny(2).to_dict()
    del saved["estimator"]["noise"]
    assert rundir.config_changes(saved, tiny(2)) == {"estimator.noise": ("v1", Config().estimator.noise)}
    v1 = tiny(2)
    v1.estimator.noise = "v1"
    assert rundir.config_changes(saved, v1) == {}


def test_default_run_dirs_are_claimed_never_shared(tmp_path):
    names = [rundir.claim_new(tmp_path / "runs", "20260101-000000").name for _ in range(3)]
    assert names == ["20260101-000000", "20260101-000000-2", "20260101-000000-3"]
