"""Crash safety: SIGKILL ``baffle run`` at random points, ``--resume``, get the uninterrupted run exactly.

The harness is baffle.testing.crash (benchmarks/crash_trials.py runs it for the figures in docs/robustness.md).
Each restart pays a Python + torch start-up, so CI runs one trial; the slow test runs ten.
"""

import os
import sys

import numpy as np
import pytest

from baffle import cli
from baffle.records import checkpoint
from baffle.testing import crash


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return crash.reference_run(tmp_path_factory.mktemp("ref"))


def _trial(reference, directory, seed, max_kills, min_kills=0):
    out, kills = crash.killed_run(directory, np.random.default_rng(seed), max_kills, min_kills=min_kills)
    same, metrics_ok, why = crash.compare(reference, out)
    assert same and metrics_ok, why
    return kills


def test_sigkill_then_resume_gives_identical_weights_and_metrics(reference, tmp_path):
    assert _trial(reference, tmp_path, seed=1, max_kills=1, min_kills=1) == 1


@pytest.mark.slow
def test_ten_sigkill_trials_all_identical(reference, tmp_path):
    kills = sum(_trial(reference, tmp_path / f"t{t}", seed=100 + t, max_kills=3) for t in range(10))
    assert kills >= 10


def _finished_run(reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


def test_truncated_checkpoint_is_refused_by_the_cli_naming_the_file(reference, tmp_path, capsys):
    out = _finished_run(reference, tmp_path)
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: os.path.getsize(ckpt) // 2])
    assert cli.main(["run", "--resume", str(out), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert str(ckpt) in err and "truncated" in err


def test_flipped_byte_checkpoint_is_refused_by_the_cli(reference, tmp_path, capsys):
    out = _finished_run(reference, tmp_path)
    ckpt = out / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0x01
    ckpt.write_bytes(bytes(data))
    before = ckpt.read_bytes()
    assert cli.main(["run", "--resume", str(out), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert str(ckpt) in err and "SHA-256" in err
    assert ckpt.read_bytes() == before  # refused, not overwritten


def test_foreign_or_empty_checkpoint_is_refused(tmp_path):
    for content in (b"", b"PK\x03\x04 a zip file", checkpoint.MAGIC + b"\x00" * 10):
        path = tmp_path / "checkpoint.pt"
        path.write_bytes(content)
        with pytest.raises(checkpoint.CheckpointError, match=str(path)):
            checkpoint.load(path)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fd")
def test_atomic_write_fsyncs_file_and_directory_and_leaves_no_temp(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    checkpoint.atomic_write_bytes(tmp_path / "x.bin", b"payload")
    assert (tmp_path / "x.bin").read_bytes() == b"payload"
    assert any(s.endswith(".tmp-" + str(os.getpid())) for s in synced)  # the temp file, before the rename
    assert str(tmp_path) in synced  # the directory, after it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    checkpoint.atomic_write_bytes(target, b"old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        checkpoint.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
