"""A real Flower deployment on loopback: SuperLink + SuperNode processes, `flwr run`, all stopped at the end.

``scripts/deploy_local.sh`` does the work; the test checks the ServerApp's result file (training
happened: rounds done, every node answered, weights moved, only scalars came back) and that no process
of the deployment survives. The CI version is one round on 2 nodes (process start-up dominates: every
message starts a ClientApp process); the slow one adds TLS, SuperNode authentication, SecAgg+, a third node and a dropout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "deploy_local.sh"
BIN = REPO / ".venv" / "bin"


def free_port_block(n: int) -> int:
    """A base port p with p..p+n free on loopback (the SuperLink takes p, SuperNodes p+1..p+n)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65000:
            continue
        ok = True
        for p in range(base, base + n + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def deploy(tmp_path: Path, nodes: int, app_config: str, *extra: str, timeout: int) -> tuple[dict, str, float]:
    if not (BIN / "flower-superlink").exists() and shutil.which("flower-superlink") is None:
        pytest.skip("flower-superlink not installed")
    home = tmp_path / "flwr-home"
    out = tmp_path / "result"
    env = dict(os.environ, FLWR_HOME=str(home), DEPLOY_TIMEOUT=str(timeout - 20))
    if not (BIN / "flower-superlink").exists():
        env["FLWR_BIN"] = str(Path(shutil.which("flower-superlink")).parent)
    port = free_port_block(nodes)
    cmd = [str(SCRIPT), "-n", str(nodes), "-p", str(port), *extra, "--", "-c", f'{app_config} result-dir="{out}"']
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # every process of the deployment is gone (they all carry this run's FLWR_HOME or ports)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    leftovers = [ln for ln in ps.splitlines() if f"--port {port}" in ln or f"127.0.0.1:{port}" in ln]
    assert not leftovers, leftovers
    return json.loads((out / "result.json").read_text()), log, took


TINY = ('data-name="synthetic" data-train-subset=200 data-test-subset=100 estimator-k=4 estimator-engine="loop" '
        "run-eval-every=1 run-threads=1 round-timeout-s=120.0 node-wait-s=60.0")


def test_loopback_deployment_trains(tmp_path):
    res, log, took = deploy(tmp_path, 2, f"num-server-rounds=2 {TINY}", timeout=300)
    assert res["mode"] == "message-api" and res["rounds_done"] == 2 and res["num_partitions"] == 2
    assert res["messages_up"] == 4 and res["failures"] == 0 and res["skipped_rounds"] == 0
    # the default transport replays: round 2's plans carry round 1's K-vector, which each node (a fresh
    # ClientApp process per message) applies to the replica in its SuperNode's node state
    assert res["transport"] == "auto" and res["plans"] == {"weights": 0, "replay": 4, "state": 0}
    assert res["up_bytes_per_msg"] < 1500  # K=4 float32 + record overhead: no weights, no gradient
    assert res["final_test_acc"] is not None
    print(f"deployment took {took:.0f} s")


@pytest.mark.slow
def test_tls_auth_secagg_deployment_with_a_dropout(tmp_path):
    cfg = f"num-server-rounds=2 {TINY} secure=true secagg-bits=16"
    res, log, took = deploy(tmp_path, 3, cfg, "--auth", "--fail", "1:1", timeout=900)  # --auth implies --tls
    assert res["mode"] == "secagg+" and res["rounds_done"] == 2 and res["num_partitions"] == 3
    assert res["skipped_rounds"] == 0 and res["failures"] == 1  # node 1 raised in round 1; the round went on
    assert "--enable-supernode-auth" in (REPO / "scripts" / "deploy_local.sh").read_text()
    print(f"TLS + node auth + SecAgg+ deployment took {took:.0f} s")


def test_connections_use_flowers_current_format(tmp_path):
    """No `options.` in the connection (flwr 1.42 warns on every run); other entries are kept."""
    from flwr.cli.flower_config import parse_superlink_connection

    from baffle.flower.connections import federation_config, write_connections

    (tmp_path / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    path = write_connections(tmp_path)
    import tomllib

    data = tomllib.loads(path.read_text())["superlink"]
    assert data["default"] == "local" and data["local"] == {"address": ":local:"}
    assert data["local-simulation"] == {"address": ":local:"}
    assert data["local-deployment"] == {"address": "127.0.0.1:9093", "insecure": True}
    for name in ("local-simulation", "local-deployment"):
        conn = parse_superlink_connection(data[name], name)
        assert conn.options is None and conn.address == data[name]["address"]
    assert federation_config(10) == "num-supernodes=10 client-resources-num-cpus=1"


def test_certs_help_writes_nothing(tmp_path):
    for args in (["--help"], []):
        proc = subprocess.run([str(BIN / "python"), "-m", "baffle.flower.certs", *args], cwd=tmp_path, capture_output=True, text=True)
        assert ("usage:" in proc.stdout) if args else (proc.returncode == 2 and "usage:" in proc.stderr)
    assert list(tmp_path.iterdir()) == []
    proc = subprocess.run([str(BIN / "python"), "-m", "baffle.flower.certs", str(tmp_path / "c"), "1"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ca.crt", "ca.key", "node-keys", "server.key", "server.pem"]


def _flwr_processes(port: int) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True).stdout.splitlines()
    return [ln for ln in ps if (f":{port}" in ln or "ClientAppActor" in ln or "flwr-simulation" in ln) and " Z" not in ln]


def simulate(tmp_path: Path, run_config: str, timeout: int) -> tuple[subprocess.CompletedProcess, list[str]]:
    """scripts/flower_sim.sh: `flwr run . local-simulation` (Ray) with 2 nodes on free ports."""
    port = free_port_block(2)
    env = dict(os.environ, FLWR_HOME=str(tmp_path / "flwr-home"), FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port),
               FLWR_LOCAL_CONTROL_API_PORT=str(port + 2))
    cmd = [str(REPO / "scripts" / "flower_sim.sh"), "-n", "2", "--", "--run-config", run_config]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, _flwr_processes(port)


@pytest.mark.slow  # CI runs test_flower_sim_resume.py's Ctrl-C + resume test instead: it checks all of this on two runs
def test_flwr_run_local_simulation_matches_baffle_run_and_leaves_nothing(tmp_path):
    """The README's `flwr run . local-simulation` (Ray, 2 nodes) on the default recipe, 4 rounds: it trains,
    writes the run dir, ends with the same final weights as `baffle run` with 2 clients, and no Flower process
    outlives it. ~30 s on an idle 2-core machine (Ray start-up dominates)."""
    from baffle.flower.config import parse_run_config
    from baffle.flower.server_core import weights_digest
    from baffle.sim.loop import Simulation

    out = tmp_path / "result"
    keys = {"num-server-rounds": 4, "run-eval-every": 2, "run-threads": 1, "data-test-subset": 500}
    run_config = " ".join(f"{k}={v}" for k, v in keys.items())
    proc, left = simulate(tmp_path, f'{run_config} result-dir="{out}"', timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert not left, left
    res = json.loads((out / "result.json").read_text())
    assert res["rounds_done"] == 4 and res["num_partitions"] == 2 and res["failures"] == 0
    for name in ("config.toml", "metrics.jsonl", "summary.json", "checkpoint.pt"):
        assert (out / name).exists(), name
    # the same run in-process, from the same app config (pyproject defaults + the keys above)
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg, _ = parse_run_config({**app, **keys})
    cfg.data.num_clients = 2
    sim = Simulation(cfg, tmp_path / "inprocess", progress=False)
    sim.run()
    assert weights_digest(sim.fed.strategy.model.state_dict()).hex() == res["weights_sha256"]


@pytest.mark.slow  # a second Ray start-up
def test_flwr_run_local_simulation_fails_loudly_and_leaves_nothing(tmp_path):
    tiny = ('num-server-rounds=2 run-eval-every=1 run-threads=1 data-name="synthetic" data-train-subset=200 '
            'data-test-subset=100 estimator-k=0 estimator-engine="loop"')
    # a run whose ServerApp fails (an invalid value) exits non-zero, and leaves nothing behind
    proc, left = simulate(tmp_path, tiny, timeout=600)
    assert proc.returncode != 0 and "ended as finished:failed" in proc.stderr, (proc.stdout + proc.stderr)[-4000:]
    assert not left, left
