"""A Flower run started as Flower users start it (`flwr run . local-simulation` on Ray, through
``scripts/flower_sim.sh``) is interrupted for real after its first checkpoint (Ctrl-C: SIGINT to the
script's process group, which stops the SuperLink, the ServerApp and Ray mid-run) and continued with
``resume = true``: the resumed run completes, its metrics history has every round exactly once, its final
weights equal `baffle run`'s with the same config (and, in the slow test, an uninterrupted `flwr run`'s),
and no Flower or Ray process is left behind.

The in-memory version of the same checks (a ServerApp that raises mid-round, several schedules, the node
catch-up control) is ``test_flower_resume.py``; this file adds the real engine, processes and signals.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from test_flower_deploy import _flwr_processes, free_port_block  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "flower_sim.sh"
PY = REPO / ".venv" / "bin" / "python"

EVERY = 5
CUT_AFTER = EVERY + 2  # interrupt once the row of this round is on disk: rows past the checkpoint get redone



def _as_a_terminal() -> None:
    """Start the script with SIGINT and SIGTERM at their defaults, as a shell in a terminal does. Something earlier
    in a full test session leaves SIGINT ignored in the pytest process; children inherit an ignored signal and a
    non-interactive bash cannot trap a signal it was started with ignored, so Ctrl-C would never reach the script
    (seen in CI: the run went on to completion and exited 0)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

def keys(rounds: int) -> dict:
    """The default recipe (pyproject's app table = `baffle run`'s defaults) on 2 nodes, short: a metrics row
    every round so that the history can be checked round by round, a checkpoint every EVERY rounds. A round
    takes ~0.25 s on Ray here; Ctrl-C lands within ~2 rounds, `flwr stop` within ~17-25 (its CLI start-up, then
    the SuperLink stopping the ServerApp), so the run must be long enough to be cut before its end."""
    return {"num-server-rounds": rounds, "run-eval-every": 1, "run-checkpoint-every": EVERY, "run-threads": 1,
            "data-test-subset": 500}


def rows(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def reached(out: Path, round_: int) -> bool:
    """The run dir holds a checkpoint and the metrics row of ``round_`` (read while the ServerApp appends)."""
    try:
        return (out / "checkpoint.pt").exists() and any(r["round"] >= round_ for r in rows(out))
    except (OSError, ValueError):  # no metrics.jsonl yet, or a row half written
        return False


def sim(tmp_path: Path, name: str, out: Path, run_config: str, *, cut_after: int = 0, how: str = "ctrl-c",
        timeout: int = 400):
    """Run scripts/flower_sim.sh -n 2 on free ports (its run dir: ``out``). With ``cut_after``, interrupt it once
    the run dir holds a checkpoint and the metrics row of round ``cut_after``: ``how = "ctrl-c"`` sends SIGINT
    to the script's process group (what a terminal does), ``"flwr-stop"`` runs ``flwr stop RUN_ID
    local-simulation`` (Flower's own way, the only one that stops a plain `flwr run`, whose Ctrl-C just stops
    streaming the log). Returns (exit code, output, Flower processes still alive, seconds)."""
    port = free_port_block(2)
    env = dict(os.environ, FLWR_HOME=str(tmp_path / f"flwr-home-{name}"), FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port),
               FLWR_LOCAL_CONTROL_API_PORT=str(port + 2))
    log = tmp_path / f"{name}.log"
    t0 = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen([str(SCRIPT), "-n", "2", "--", "--run-config", run_config], cwd=REPO, env=env,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_as_a_terminal)
        try:
            if cut_after:
                while proc.poll() is None and time.monotonic() - t0 < timeout:
                    if reached(out, cut_after):
                        if how == "ctrl-c":
                            os.killpg(proc.pid, signal.SIGINT)
                        else:
                            run_id = re.search(r"Successfully started run (\d+)", log.read_text()).group(1)
                            stop = subprocess.run([str(REPO / ".venv" / "bin" / "flwr"), "stop", run_id, "local-simulation"],
                                                  cwd=REPO, env={**env, "PATH": "/usr/bin:/bin"},  # never start a SuperLink
                                                  capture_output=True, text=True, timeout=120)
                            assert stop.returncode == 0, stop.stdout + stop.stderr
                        break
                    time.sleep(0.05)
            rc = proc.wait(timeout=max(1, timeout - (time.monotonic() - t0)))
        finally:
            if proc.poll() is None:  # the test failed: do not leave the run behind
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(timeout=60)
    took = time.monotonic() - t0
    time.sleep(0.5)  # let the last reaped children disappear from ps
    return rc, log.read_text(), _flwr_processes(port), took


def baffle_run(tmp_path: Path, rounds: int) -> tuple[str, list[dict]]:
    """`baffle run` (the in-process engine) with the same config and 2 clients: final weights hash, rows."""
    from baffle.flower.config import parse_run_config
    from baffle.flower.server_core import weights_digest
    from baffle.sim.loop import Simulation

    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cfg, _ = parse_run_config({**app, **keys(rounds)})
    cfg.data.num_clients = 2
    sim_ = Simulation(cfg, tmp_path / "inprocess", progress=False)
    sim_.run()
    return weights_digest(sim_.fed.strategy.model.state_dict()).hex(), rows(tmp_path / "inprocess")


def interrupt_and_resume(tmp_path: Path, how: str, rounds: int) -> tuple[Path, dict]:
    from baffle.records import checkpoint

    out = tmp_path / "cut"
    run_config = " ".join(f"{k}={v}" for k, v in keys(rounds).items()) + f' result-dir="{out}"'
    rc, log, left, took = sim(tmp_path, "cut", out, run_config, cut_after=CUT_AFTER, how=how)
    if how == "ctrl-c":
        assert rc == 130, f"exit {rc} after Ctrl-C (130 expected)\n{log[-4000:]}"
    else:
        assert rc == 1 and "ended as finished:stopped" in log, f"exit {rc} after flwr stop\n{log[-4000:]}"
    assert not left, left
    assert not (out / "result.json").exists() and not (out / "summary.json").exists(), "the run finished before the cut"
    cut_rounds = [r["round"] for r in rows(out)]
    ckpt_round = checkpoint.load(out / "checkpoint.pt")["round"]
    assert cut_rounds == list(range(1, len(cut_rounds) + 1)) and CUT_AFTER <= cut_rounds[-1] < rounds, cut_rounds
    assert ckpt_round % EVERY == 0 and EVERY <= ckpt_round <= cut_rounds[-1], ckpt_round
    print(f"cut ({how}): {took:.0f} s, metrics rows 1..{cut_rounds[-1]}, checkpoint at round {ckpt_round}")

    rc, log, left, took = sim(tmp_path, "resume", out, run_config + " resume=true")
    assert rc == 0, log[-4000:]
    assert not left, left
    assert f"rounds {ckpt_round + 1}..{rounds}" in log, log[-4000:]  # it went on from the checkpoint
    res = json.loads((out / "result.json").read_text())
    assert res["rounds_done"] == rounds and res["num_partitions"] == 2 and res["failures"] == 0
    assert [r["round"] for r in rows(out)] == list(range(1, rounds + 1))  # every round exactly once
    for name in ("config.toml", "summary.json", "curves.png", "checkpoint.pt"):
        assert (out / name).exists(), name
    print(f"resume: {took:.0f} s, final weights {res['weights_sha256']}")
    return out, res


def test_flwr_run_interrupted_by_ctrl_c_resumes_to_baffle_runs_weights(tmp_path):
    """Ctrl-C mid-run, then resume=true: same final weights and the same test accuracy at every round as
    `baffle run`. Two Ray start-ups: 100-120 s on a 2-core machine beside one other job (each `flower_sim.sh`
    run is ~50 s, mostly SuperLink, `flwr run` and Ray start-up; the 30 rounds take ~7 s)."""
    out, res = interrupt_and_resume(tmp_path, "ctrl-c", 30)
    digest, ref = baffle_run(tmp_path, 30)
    assert res["weights_sha256"] == digest, "the resumed flwr run diverged from baffle run"
    assert [(r["round"], r["test_acc"], r["test_loss"]) for r in rows(out)] == \
        [(r["round"], r["test_acc"], r["test_loss"]) for r in ref]


def _same_columns(row: dict) -> dict:
    """A metrics row without its wall-clock columns and downlink bytes (the resumed run's first plan to each
    partition also carries its step count, ~20 bytes: test_flower_resume.py checks that)."""
    return {k: v for k, v in row.items() if "wall" not in k and not k.startswith("down_bytes")}


@pytest.mark.slow  # a third Ray start-up
def test_flwr_run_stopped_and_resumed_equals_an_uninterrupted_flwr_run(tmp_path):
    """`flwr stop` mid-run, then resume=true: the same final weights and metrics rows (but for wall-clock and
    downlink columns) as an uninterrupted `flwr run`, and the same weights as `baffle run`."""
    out, res = interrupt_and_resume(tmp_path, "flwr-stop", 100)
    full = tmp_path / "full"
    run_config = " ".join(f"{k}={v}" for k, v in keys(100).items()) + f' result-dir="{full}"'
    rc, log, left, took = sim(tmp_path, "full", full, run_config)
    assert rc == 0 and not left, (left, log[-4000:])
    print(f"uninterrupted: {took:.0f} s")
    assert res["weights_sha256"] == json.loads((full / "result.json").read_text())["weights_sha256"]
    assert [_same_columns(r) for r in rows(out)] == [_same_columns(r) for r in rows(full)]
    digest, _ = baffle_run(tmp_path, 100)
    assert res["weights_sha256"] == digest


# --- the script's exit code when interrupted, without Ray: fake `flwr` and `flower-superlink` -----------------

FAKE_SUPERLINK = '''#!{py}
import sys, http.server
port = int(sys.argv[sys.argv.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''
# what `flwr run --stream` does on Ctrl-C (flwr/cli/log.py): "Exiting logstream", exit status 0
FAKE_FLWR = '''#!{py}
import sys, time
print("Successfully started run 1", flush=True)
try:
    time.sleep(120)
except KeyboardInterrupt:
    print("Exiting logstream", flush=True)
'''


@pytest.mark.parametrize("sig,code,group", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, True), (signal.SIGTERM, 143, False)],
                         ids=["ctrl-c", "sigterm", "sigterm-to-the-script-alone"])
def test_flower_sim_reports_an_interrupted_run_as_failed(tmp_path, sig, code, group):
    """flwr run --stream exits 0 on Ctrl-C, and flower_sim.sh used to pass that on: an interrupted run looked
    like a completed one (exit 0). It must exit 130 (Ctrl-C) / 143 (SIGTERM) and still stop its SuperLink; a
    SIGTERM to the script's PID alone (`kill PID`) must act at once, not when `flwr run` ends by itself, and stop
    `flwr run` too."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("python", '#!/bin/sh\nexec {py} "$@"\n'), ("flower-superlink", FAKE_SUPERLINK), ("flwr", FAKE_FLWR)):
        (bin_ / name).write_text(text.format(py=PY))
        (bin_ / name).chmod(0o755)
    port = free_port_block(2)
    env = dict(os.environ, FLWR_BIN=str(bin_), FLWR_HOME=str(tmp_path / "home"),
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port), FLWR_LOCAL_CONTROL_API_PORT=str(port + 2))
    log = tmp_path / "log"
    with log.open("w") as f:
        proc = subprocess.Popen([str(SCRIPT), "-n", "2"], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                preexec_fn=_as_a_terminal,
                                start_new_session=True)
        t0 = time.monotonic()
        while "Successfully started run" not in log.read_text() and proc.poll() is None and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        t_kill = time.monotonic()
        os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        rc = proc.wait(timeout=60)
    assert rc == code, log.read_text()
    assert time.monotonic() - t_kill < 30  # the fake flwr run sleeps 120 s: the script did not wait for it
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout.splitlines()
    assert not [ln for ln in ps if f"--port {port}" in ln and not ln.startswith("Z")]
    assert not [ln for ln in ps if str(bin_ / "flwr") in ln and not ln.startswith("Z")]
