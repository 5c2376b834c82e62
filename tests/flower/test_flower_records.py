"""One record for every front-end: a Flower run writes the simulator's metrics schema and run dir, goes
through the same round ingest (central DP included), and ``baffle compare`` reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from baffle import cli  # noqa: E402
from baffle.flower import server_core  # noqa: E402
from baffle.flower.config import parse_run_config  # noqa: E402
from baffle.flower.inmemory import run_inmemory  # noqa: E402
from baffle.records.metrics import ROW_KEYS, SUMMARY_KEYS  # noqa: E402
from baffle.sim.loop import Simulation  # noqa: E402
from test_flower import tiny  # noqa: E402


def _flower_and_inprocess(tmp_path: Path, name: str, **extra) -> tuple[Path, Path, str]:
    rc = tiny(tmp_path, name, **extra)
    run_inmemory(rc, 3)
    cfg, _ = parse_run_config(rc)
    cfg.data.num_clients = 3
    sim = Simulation(cfg, tmp_path / f"{name}-sim", progress=False)
    sim.run()
    return Path(rc["result-dir"]), tmp_path / f"{name}-sim", server_core.weights_digest(sim.fed.strategy.model.state_dict()).hex()


@pytest.mark.parametrize("mode", ["central", "local"])
def test_differential_privacy_on_flower_matches_the_simulator(tmp_path, mode):
    flower, sim, digest = _flower_and_inprocess(tmp_path, mode, **{"privacy-mode": mode, "privacy-clip": 0.05})
    result = json.loads((flower / "result.json").read_text())
    assert result["rounds_done"] == 3 and result["skipped_rounds"] == 0
    assert result["weights_sha256"] == digest, f"{mode} DP on Flower diverged from the in-process run"
    rows = [json.loads(ln) for ln in (flower / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["privacy_mode"] == mode and rows[-1]["epsilon"] > 0
    sim_rows = [json.loads(ln) for ln in (sim / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epsilon"] == pytest.approx(sim_rows[-1]["epsilon"])


def test_central_dp_with_secagg_is_refused():
    from baffle.config import ConfigError

    with pytest.raises(ConfigError, match="SecAgg"):
        parse_run_config({"privacy-mode": "central", "secure": True})


def test_flower_run_dir_has_the_simulator_schema_and_compare_reads_it(tmp_path, capsys):
    flower, sim, _ = _flower_and_inprocess(tmp_path, "plain")
    for run in (flower, sim):
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(set(ROW_KEYS) <= set(r) for r in rows), f"{run}: missing {set(ROW_KEYS) - set(rows[0])}"
        summary = json.loads((run / "summary.json").read_text())
        assert set(SUMMARY_KEYS) <= set(summary)
        assert (run / "config.toml").exists() and (run / "curves.png").exists() and (run / "checkpoint.pt").exists()
    f_rows = [json.loads(ln) for ln in (flower / "metrics.jsonl").read_text().splitlines()]
    s_rows = [json.loads(ln) for ln in (sim / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_loss"] is not None for r in f_rows)  # data-eval-train-samples: the same probe as baffle run
    same = ("round", "test_acc", "test_loss", "train_loss", "total_forward_passes", "total_forward_samples", "total_upload_bytes",
            "upload_bytes_per_client", "total_download_bytes", "download_bytes_per_client", "client_forward_passes", "answered_uploads", "rejected_uploads", "lr", "round_sampled")
    assert [{k: r[k] for k in same} for r in f_rows] == [{k: r[k] for k in same} for r in s_rows]
    assert cli.main(["compare", str(sim), str(flower), "--out", str(tmp_path / "cmp.png")]) == 0
    out = capsys.readouterr().out
    assert str(flower.name) in out and (tmp_path / "cmp.png").exists()


def test_flower_checkpoint_initialises_a_run(tmp_path):
    """The model a Flower run ends with is usable: `--init` of its checkpoint starts from those weights."""
    flower, _, _ = _flower_and_inprocess(tmp_path, "init")
    rc = tiny(tmp_path, "unused")
    cfg, _ = parse_run_config(rc)
    cfg.model.init = str(flower / "checkpoint.pt")
    from baffle.sim.factory import build_model_for, load_data

    train, _ = load_data(cfg)
    model = build_model_for(cfg, train)
    result = json.loads((flower / "result.json").read_text())
    assert server_core.weights_digest(model.state_dict()).hex() == result["weights_sha256"]


def test_fltrust_on_flower_matches_the_simulator(tmp_path):
    flower, _, digest = _flower_and_inprocess(tmp_path, "trust", **{"federation-aggregator": "fltrust",
                                                                     "federation-trust-root-samples": 32})
    assert json.loads((flower / "result.json").read_text())["weights_sha256"] == digest


@pytest.mark.parametrize("transport", ["weights", "replay"])
def test_pruned_run_on_flower_matches_the_simulator(tmp_path, transport):
    """model.prune on Flower: the server and every node rebuild the same mask from the initial weights (none is
    sent), nodes perturb only unpruned weights (replay: the node's replica masks its updates too)."""
    flower, _, digest = _flower_and_inprocess(tmp_path, f"pruned-{transport}", **{"model-prune": 0.5, "transport": transport})
    res = json.loads((flower / "result.json").read_text())
    assert res["weights_sha256"] == digest and res["rounds_done"] == 3
    unpruned, _, dense = _flower_and_inprocess(tmp_path, f"dense-{transport}", transport=transport)
    assert dense != digest  # the mask really changed the run


def test_uploads_reach_the_aggregate_in_baffle_runs_order_whatever_order_nodes_answer(tmp_path, monkeypatch):
    """The aggregate is a float sum: replies handed over in arrival order changed its last bit now and then
    (a 3,000-round Ray run diverged from `baffle run` at round 2,777). Replies arriving reversed must still be
    ingested in the sampled order."""
    from baffle.flower.strategy import BaffleStrategy

    real_aggregate, real_ingest = BaffleStrategy.aggregate_train, server_core.ServerCore.ingest
    monkeypatch.setattr(BaffleStrategy, "aggregate_train", lambda self, rnd, replies: real_aggregate(self, rnd, list(replies)[::-1]))
    seen: list[list[int]] = []

    def spy(self, r, uploads, expected, up_bytes):
        seen.append([u.client_id for u in uploads])
        return real_ingest(self, r, uploads, expected, up_bytes)

    monkeypatch.setattr(server_core.ServerCore, "ingest", spy)
    run_inmemory(tiny(tmp_path, "order"), 3)
    assert len(seen) == 3 and all(ids == sorted(ids) and len(ids) == 3 for ids in seen), seen
