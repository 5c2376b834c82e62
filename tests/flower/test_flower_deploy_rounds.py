"""scripts/flower_deploy_rounds.py --dry-run: the deployments it would time, and the Flower wait constants
it names in docs/flower.md, checked against the installed flwr (the real run takes minutes: not in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "flower_deploy_rounds.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_dry_run_lists_both_modes_and_flwr_waits() -> None:
    proc = run("--dry-run", "--rounds", "2", "5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    cmds = lines[:-1]
    assert len(cmds) == 4 and all("deploy_local.sh -n 3" in c for c in cmds)
    assert [("num-server-rounds=2" in c, "secure=true" in c) for c in cmds] == [(True, False), (False, False), (True, True), (False, True)]
    waits = json.loads(lines[-1])
    assert waits["supernode_idle_pull_s"] == 3.0 and waits["superexec_task_poll_default_s"] == 1.0


def test_rounds_must_increase() -> None:
    proc = run("--dry-run", "--rounds", "5", "5")
    assert proc.returncode == 2 and "1 <= R1 < R2" in proc.stderr
