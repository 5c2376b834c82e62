"""A real SIGKILL in a real deployment: SuperLink + 3 SuperNodes on loopback, SecAgg+, the SuperNode of
partition 1 killed while the key exchange (``share_keys``) of round 0 is under way, then restarted.

``scripts/deploy_local.sh --kill`` makes that node block at the stage and SIGKILLs its process groups
(SuperNode, SuperExec, ClientApp) when it does; the restarted SuperNode registers under a new node id. The
round must cost only that node's contribution, the failure must name the node and partition, and the
restarted node must take part in the next round. Slow: minutes of process start-up and waiting.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("flwr")

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
APP = ('num-server-rounds=2 data-name="synthetic" data-train-subset=200 data-test-subset=100 estimator-k=4 '
       'estimator-engine="loop" run-eval-every=1 run-threads=1 round-timeout-s=120.0 node-wait-s=90.0 secure=true secagg-bits=16')


def free_port_block(n: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65000:
            continue
        try:
            for p in range(base, base + n + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port block")


@pytest.mark.slow
def test_node_sigkilled_during_key_exchange_costs_only_itself_and_rejoins(tmp_path):
    if not (BIN / "flower-superlink").exists():
        pytest.skip("flower-superlink not installed in .venv")
    out, port = tmp_path / "result", free_port_block(6)  # SuperLink, 3 SuperNodes, the restarted one's port
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr-home"), DEPLOY_TIMEOUT="840", KILL_RESTART_S="5")
    cmd = [str(REPO / "scripts" / "deploy_local.sh"), "-n", "3", "-p", str(port), "--kill", "1:share_keys:0",
           "--", "-c", f'{APP} result-dir="{out}"']
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert " killed partition 1 " in log and " restarted partition 1 " in log, log[-2000:]
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    assert not [ln for ln in ps.splitlines() if f"127.0.0.1:{port}" in ln or f"--port {port}" in ln]
    res = json.loads((out / "result.json").read_text())
    sa = res["secagg"]
    assert res["rounds_done"] == 2 and res["skipped_rounds"] == 0 and sa["secagg_lost_rounds"] == 0
    assert res["failures"] == 1 and sa["secagg_failed_nodes"] == 1 and sa["secagg_retries"] == 0
    r0, r1 = sa["rounds"]
    (f,) = r0["failures"]
    assert f["partition"] == 1 and f["stage"] == "share_keys" and f["node"] > 1
    assert f"node {f['node']} (partition 1) failed: SecAgg+ stage share_keys" in log
    assert r0["contributed"] == [0, 2] and r1["contributed"] == [0, 1, 2]
    assert f["node"] not in r1["contributed_nodes"]  # partition 1 is back under the restarted node's new id
    shutil.rmtree(tmp_path / "flwr-home", ignore_errors=True)
