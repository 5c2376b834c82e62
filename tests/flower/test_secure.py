"""SecAgg+ on Flower when a node fails at each stage of the protocol (in-memory grid: real ServerApp,
ClientApp, secaggplus_mod and Flower serde; ``baffle.flower.secagg_faults`` injects the failures).

Two ways to fail: the node's ClientApp raises at that stage (an error reply), or the node vanishes there (no
reply at all, it leaves the node list, and a new node id comes back with the same partition and a fresh state:
a SIGKILLed and restarted SuperNode). Either way the round must cost at most that node's contribution: the
aggregate of round 0 equals the plain mean of the nodes that contributed, to one quantization step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from baffle.flower import server_core  # noqa: E402
from baffle.flower.inmemory import run_inmemory  # noqa: E402
from baffle.flower.secagg_faults import FAULT_KEY, STAGES, parse_fault, run_killing  # noqa: E402
from baffle.flower.secure import QuantSpec  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NODES = 4
FAILING = 2  # partition
ONE = {"num-server-rounds": 2, "run-eval-every": 1, "secagg-bits": 16, "secagg-clip": 0.5}


def tiny(tmp_path: Path, name: str, **extra) -> dict:
    """A seconds-long run config: synthetic data, LeNet, K=8 (the app's defaults otherwise)."""
    import tomllib

    rc = dict(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    rc.update({"num-server-rounds": 3, "run-eval-every": 3, "run-threads": 1, "data-name": "synthetic", "data-image-size": 0,
               "data-train-subset": 300, "data-test-subset": 100, "model-name": "lenet", "estimator-k": 8,
               "estimator-engine": "loop", "federation-batch-size": 32, "optim-warmup": 0, "optim-ema-decay": 0.0,
               "result-dir": str(tmp_path / name)})
    rc.update(extra)
    return rc


def result(rc: dict) -> dict:
    return json.loads((Path(rc["result-dir"]) / "result.json").read_text())


class Aggregates:
    """Records every aggregated K-vector the server steps with (round -> vector), plain or SecAgg+."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.seen: dict[int, np.ndarray] = {}
        real = server_core.ServerCore._count

        def spy(core, res, **kw):
            if res.aggregate is not None:
                self.seen[res.round] = np.array(res.aggregate, dtype=np.float64)
            return real(core, res, **kw)

        mp.setattr(server_core.ServerCore, "_count", spy)


@pytest.fixture(scope="module")
def plain_round0(tmp_path_factory) -> dict[str, np.ndarray]:
    """Round 0's plain mean over all four nodes and over the three without partition FAILING."""
    tmp = tmp_path_factory.mktemp("plain")
    out = {}
    for name, extra in (("all", None), ("without", {FAILING: {"fail-at-round": 0}})):
        with pytest.MonkeyPatch.context() as mp:
            agg = Aggregates(mp)
            run_inmemory(tiny(tmp, name, **ONE), NODES, node_extra=extra)
        out[name] = agg.seen[0]
    return out


def secagg(res: dict) -> dict:
    return res["secagg"]


@pytest.mark.parametrize("mode", ["raise", "vanish"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_node_failing_at_any_stage_costs_only_its_contribution(tmp_path, monkeypatch, plain_round0, stage, mode):
    rc = tiny(tmp_path, f"{stage}-{mode}", secure=True, **ONE)
    agg = Aggregates(monkeypatch)
    if mode == "raise":
        grid = run_killing(rc, NODES, None, node_extra={FAILING: {FAULT_KEY: f"{stage}:0"}})
    else:
        grid = run_killing(rc, NODES, (FAILING, stage, 0))
    res = result(rc)
    sa = secagg(res)
    assert res["rounds_done"] == 2 and res["skipped_rounds"] == 0 and sa["secagg_lost_rounds"] == 0
    assert sa["secagg_retries"] == 0 and res["failures"] == 1 and sa["secagg_failed_nodes"] == 1
    r0, r1 = sa["rounds"]
    (f,) = r0["failures"]
    assert (f["partition"], f["stage"], f["attempt"]) == (FAILING, stage, 1)
    assert f["node"] == 1000 + FAILING  # the real node id, not -1
    assert ("error reply: SecAggFault" in f["reason"]) if mode == "raise" else f["reason"].startswith("no reply")
    # its vector is in the sum only if it failed after sending it (unmask); the others' masks all cancel
    in_sum = stage == "unmask"
    assert r0["contributed"] == ([0, 1, 2, 3] if in_sum else [0, 1, 3]) and r0["sampled"] == [0, 1, 2, 3]
    plain = plain_round0["all" if in_sum else "without"]
    step = QuantSpec(0.5, 16).step
    assert np.abs(agg.seen[0] - plain).max() <= step
    assert np.abs(plain - plain_round0["without" if in_sum else "all"]).max() > 10 * step  # the two differ
    # the next round: everybody, the vanished node back under a new id (it rejoined)
    assert r1["contributed"] == [0, 1, 2, 3] and r1["failures"] == [] and r1["attempts"] == 1
    if mode == "vanish":
        assert grid.killed == [1000 + FAILING] and grid.restarted == [1000 + NODES]
        assert r1["contributed_nodes"] == [1000, 1001, 1003, 1004]
    rows = [json.loads(ln) for ln in (Path(rc["result-dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["secagg_failed_nodes"] == 1 and rows[-1]["secagg_retries"] == 0 and rows[-1]["failures"] == 1


def test_a_halted_round_is_retried_with_the_nodes_that_remain(tmp_path, monkeypatch):
    """threshold 0.9 of 5 nodes = 4 shares: two nodes failing at setup leave 3 < 4 and the attempt halts;
    the retry runs SecAgg+ afresh (new keys, the threshold recomputed) among the three that remain."""
    rc = tiny(tmp_path, "retry", secure=True, **{**ONE, "num-server-rounds": 1, "secagg-threshold": 0.9})
    agg = Aggregates(monkeypatch)
    run_killing(rc, 5, None, node_extra={1: {FAULT_KEY: "setup:0"}, 3: {FAULT_KEY: "setup:0"}})
    res = result(rc)
    sa = secagg(res)
    assert res["rounds_done"] == 1 and res["skipped_rounds"] == 0 and sa["secagg_lost_rounds"] == 0
    assert sa["secagg_retries"] == 1 and sa["secagg_failed_nodes"] == 2 and res["failures"] == 2
    (r0,) = sa["rounds"]
    assert r0["attempts"] == 2 and r0["halted_at"] == ["setup"] and r0["contributed"] == [0, 2, 4]
    assert sorted((f["partition"], f["stage"]) for f in r0["failures"]) == [(1, "setup"), (3, "setup")]
    assert 0 in agg.seen and np.isfinite(agg.seen[0]).all()


@pytest.mark.parametrize("stage", ["share_keys", "unmask"])
def test_a_node_restarted_under_its_old_id_rejoins(tmp_path, stage):
    """A SuperNode with a fixed key (node authentication) comes back under the same node id, with a fresh state."""
    rc = tiny(tmp_path, f"same-{stage}", secure=True, **ONE)
    grid = run_killing(rc, 3, (1, stage, 0), same_id=True)
    sa = secagg(result(rc))
    assert grid.killed == grid.restarted == [1001] and sa["secagg_lost_rounds"] == 0 and sa["secagg_failed_nodes"] == 1
    r0, r1 = sa["rounds"]
    assert r0["failures"][0]["node"] == 1001 and r0["failures"][0]["partition"] == 1
    assert r1["contributed_nodes"] == [1000, 1001, 1002] and r1["failures"] == []


def test_rounds_with_fewer_than_two_nodes_are_lost_and_counted(tmp_path):
    rc = tiny(tmp_path, "lost", secure=True, **ONE)
    grid = run_killing(rc, 2, (1, "setup", 0), restart=False)
    res = result(rc)
    sa = secagg(res)
    assert grid.killed == [1001] and res["rounds_done"] == 2
    assert res["skipped_rounds"] == 2 and sa["secagg_lost_rounds"] == 2 and sa["secagg_failed_nodes"] == 1
    assert [r["lost"] for r in sa["rounds"]] == [True, True] and sa["rounds"][1]["sampled"] == []


def test_no_fault_no_failure(tmp_path):
    rc = tiny(tmp_path, "clean", secure=True, **ONE)
    run_killing(rc, 3, None)
    sa = secagg(result(rc))
    assert sa["secagg_failed_nodes"] == sa["secagg_retries"] == sa["secagg_lost_rounds"] == 0
    assert [r["contributed"] for r in sa["rounds"]] == [[0, 1, 2]] * 2


@pytest.mark.parametrize("bad", ["unmask", "setup:x", "keys:1", "unmask:1:explode", "a:1:2:3"])
def test_bad_fault_spec_names_the_key(bad):
    with pytest.raises(ValueError, match=FAULT_KEY):
        parse_fault(bad)


def test_fault_spec():
    f = parse_fault("share_keys:3:hang")
    assert (f.stage, f.round, f.mode) == ("share_keys", 3, "hang") and parse_fault("unmask:0").mode == "raise"
