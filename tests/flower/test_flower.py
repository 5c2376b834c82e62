"""The Flower app on an in-memory grid: same math as `baffle run`, replay transport, dropouts, SecAgg+."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")

from baffle.config import Config, ConfigError  # noqa: E402
from baffle.flower import server_core  # noqa: E402
from baffle.flower.config import (  # noqa: E402
    NOT_ON_FLOWER, FlowerOptions, config_keys, option_keys, parse_run_config, render_app_config, to_run_config,
)
from baffle.flower.inmemory import run_inmemory  # noqa: E402
from baffle.flower.secure import QuantSpec, secure_mean_model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
APP_CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def tiny(tmp_path: Path, name: str, **extra) -> dict:
    rc = dict(APP_CONFIG)
    rc.update({"num-server-rounds": 3, "run-eval-every": 3, "run-threads": 1, "data-name": "synthetic", "data-image-size": 0,
               "data-train-subset": 300, "data-test-subset": 100, "model-name": "lenet", "estimator-k": 8,
               "estimator-engine": "loop", "federation-batch-size": 32, "optim-warmup": 0, "optim-ema-decay": 0.0,
               "result-dir": str(tmp_path / name)})
    rc.update(extra)
    return rc


def result(rc: dict) -> dict:
    return json.loads((Path(rc["result-dir"]) / "result.json").read_text())


def in_process(rc: dict) -> tuple[dict, str]:
    """The same run as ``baffle run`` in this process (the in-memory federation's 3 nodes as 3 clients): its
    summary and the hex SHA-256 of its final global weights, which every Flower transport must reproduce."""
    from baffle.sim.loop import Simulation

    cfg, _ = parse_run_config(rc)
    cfg.data.num_clients = 3
    sim = Simulation(cfg, None, progress=False)
    summary = sim.run()
    return summary, server_core.weights_digest(sim.fed.strategy.model.state_dict()).hex()


def test_pyproject_app_config_is_generated_from_config_defaults():
    """pyproject's [tool.flwr.app.config] is exactly the derived table (scripts/flower_app_config.py writes it)."""
    derived = to_run_config()
    assert APP_CONFIG == derived, "run scripts/flower_app_config.py"
    assert {k: type(v) for k, v in APP_CONFIG.items()} == {k: type(v) for k, v in derived.items()}
    assert (REPO / "pyproject.toml").read_text().count(render_app_config()) == 1  # comments and order too
    cfg, opts = parse_run_config(APP_CONFIG)
    assert cfg.to_dict() == Config().validate().to_dict() and opts == FlowerOptions()


def test_every_baffle_run_key_is_an_app_key_or_excluded_with_a_reason():
    keys = config_keys()
    assert sorted([*keys.values(), *NOT_ON_FLOWER]) == sorted(Config.keys())
    assert keys["estimator-k"] == "estimator.K" and keys["federation-batch-size"] == "federation.batch_size"
    assert keys["num-server-rounds"] == "run.rounds" and keys["fraction-train"] == "federation.clients_per_round"
    assert not set(keys) & set(option_keys())
    # a non-default value of every app key survives the round trip through the flat run config
    cfg = Config()
    cfg.apply_overrides(["run.rounds=7", "model.trainable=classifier.*,features.0.*", "optim.milestones=[3, 5]",
                         "optim.betas=[0.8, 0.9]", "data.classes=[1, 2, 3]", "federation.clients_per_round=3"])
    back, _ = parse_run_config(to_run_config(cfg))
    assert back.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("bad, match", [({"estimator-kk": 3}, "unknown Flower app config key"),
                                        ({"batch-size": 3}, "did you mean 'federation-batch-size'"),
                                        ({"run-rounds": 3}, "called 'num-server-rounds'"),
                                        ({"federation-attack": "noise"}, "simulator-only"),
                                        ({"run-device": "cuda"}, "run.device"),
                                        ({"estimator-k": "many"}, "estimator.K"),
                                        ({"secure": 1}, "true or false"),
                                        ({"transport": "carrier-pigeon"}, "transport"),
                                        ({"transport": "replay", "secure": True}, "secure=true supports"),
                                        ({"run-method": "fedavg"}, "scalar-upload methods baffle, baffle_multistep only")])
def test_bad_app_config_is_a_clear_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_config({**APP_CONFIG, **bad})


def test_flower_weights_and_replay_match_inprocess_bit_for_bit(tmp_path):
    rc_w = tiny(tmp_path, "w", transport="weights")
    rc_r = tiny(tmp_path, "r", transport="replay")
    rc_a = tiny(tmp_path, "a")  # the default, auto: replay here (every node is sampled every round)
    for rc in (rc_w, rc_r, rc_a):
        run_inmemory(rc, 3)
    w, r, auto = result(rc_w), result(rc_r), result(rc_a)
    assert auto["transport"] == "auto" and auto["weights_sha256"] == r["weights_sha256"]
    assert auto["down_bytes_per_msg"] == r["down_bytes_per_msg"]
    summary, inproc = in_process(rc_w)
    assert w["rounds_done"] == r["rounds_done"] == 3 and w["failures"] == r["failures"] == 0
    assert w["weights_sha256"] == inproc, "Flower run diverged from the in-process engine"
    assert r["weights_sha256"] == inproc, "replayed replicas diverged from the server"
    assert w["final_test_acc"] == pytest.approx(summary["final_test_acc"])
    # replay ships K-vectors instead of the ~27k-parameter model
    assert r["down_bytes_per_msg"] < w["down_bytes_per_msg"] / 20
    assert w["up_bytes_per_msg"] < 2000  # K=8 scalars + Flower record overhead, no weights


def test_multistep_on_flower_matches_inprocess_and_lagging_replicas_catch_up(tmp_path):
    """run-method=baffle_multistep: each node takes S local steps and uploads S x K scalars; the server steps on
    the mean trajectory. With 2 of 3 nodes sampled per round, replay-transport nodes that missed rounds catch
    up from the aggregated S x K vectors alone; every transport ends on `baffle run`'s weights, bit for bit."""
    S, K = 3, 8
    sched = {"num-server-rounds": 4, "run-eval-every": 4, "fraction-train": 2, "run-method": "baffle_multistep",
             "federation-local-steps": S, "federation-local-lr": 0.01}
    rcs = {t: tiny(tmp_path, t, transport=t, **sched) for t in ("weights", "replay", "auto")}
    for rc in rcs.values():
        run_inmemory(rc, 3)
    res = {t: result(rc) for t, rc in rcs.items()}
    summary, inproc = in_process(rcs["weights"])
    for t, r in res.items():
        assert r["failures"] == 0 and r["rounds_done"] == 4, t
        assert r["weights_sha256"] == inproc, f"{t}: Flower multistep diverged from baffle run"
    assert res["replay"]["plans"] == {"weights": 0, "replay": 8, "state": 0}
    rows = [json.loads(line) for line in (Path(rcs["replay"]["result-dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["total_forward_passes"] == summary["total_forward_passes"] == 4 * 2 * S * (K + 1)
    assert rows[-1]["total_upload_bytes"] == summary["total_upload_bytes"] == 4 * 2 * (16 + 4 * S * K)
    # a lagging node receives every round it missed: S x K scalars per round, never the model
    assert res["replay"]["down_bytes_per_msg"] < res["weights"]["down_bytes_per_msg"] / 20


def test_multistep_with_a_robust_aggregator_and_local_dp_on_flower_matches_inprocess(tmp_path):
    """The nodes privatize their whole S x K vector and the server takes the coordinate-wise median of them, as the
    simulator does: the Flower run ends on `baffle run`'s weights, bit for bit."""
    sched = {"num-server-rounds": 3, "run-eval-every": 3, "run-method": "baffle_multistep", "federation-local-steps": 2,
             "federation-aggregator": "median", "privacy-mode": "local", "privacy-clip": 0.05}
    rc = tiny(tmp_path, "msdp", transport="weights", **sched)
    run_inmemory(rc, 3)
    res = result(rc)
    _, inproc = in_process(rc)
    assert res["failures"] == 0 and res["rounds_done"] == 3
    assert res["weights_sha256"] == inproc


def test_auto_transport_sends_the_server_state_to_nodes_far_behind(tmp_path, monkeypatch):
    """auto: a node whose missing K-vectors outweigh the server state gets the state (model + Adam moments) once
    and replays from it. With the threshold at 0 every plan after round 0 is such a plan, 2 of 3 nodes sampled:
    the final weights must still be the weights transport's, with no node failing."""
    monkeypatch.setattr(server_core, "REPLAY_STATE_RATIO", 0.0)
    sched = {"num-server-rounds": 5, "run-eval-every": 5, "fraction-train": 2}
    rc_w, rc_a = tiny(tmp_path, "w", transport="weights", **sched), tiny(tmp_path, "a", transport="auto", **sched)
    run_inmemory(rc_w, 3)
    run_inmemory(rc_a, 3)
    w, a = result(rc_w), result(rc_a)
    assert a["failures"] == 0 and a["weights_sha256"] == w["weights_sha256"]
    assert a["plans"]["state"] >= 4 and a["plans"]["replay"] == 2 and a["plans"]["weights"] == 0
    assert w["plans"] == {"weights": 10, "replay": 0, "state": 0}


@pytest.mark.parametrize("extra", [{"federation-aggregator": "median"}, {"privacy-mode": "central", "privacy-clip": 0.05},
                                   {"model-adapter": "lora", "model-trainable": "*lora_*,classifier.bias"}],
                         ids=["median", "central-dp", "lora"])
def test_auto_transport_is_exact_with_robust_aggregation_central_dp_and_lora(tmp_path, extra):
    """Where the docs say replay is exact: the node applies the K-vector the server stepped with (after the
    median, after central DP's clipping and noise; LoRA adapters as parameters), so the run ends as with weights."""
    sched = {"num-server-rounds": 3, "fraction-train": 2, **extra}
    rc_w, rc_a = tiny(tmp_path, "w", transport="weights", **sched), tiny(tmp_path, "a", **sched)
    run_inmemory(rc_w, 3)
    run_inmemory(rc_a, 3)
    w, a = result(rc_w), result(rc_a)
    assert a["failures"] == 0 and a["plans"]["weights"] == 0 and a["weights_sha256"] == w["weights_sha256"]


def test_a_server_state_that_does_not_load_is_refused_and_changes_nothing(tmp_path, monkeypatch, caplog):
    """A node never executes or half-loads what a plan calls the server state: bytes that are not a
    ``torch.save`` of tensors are refused with an error naming them, and the round goes on without that node."""
    monkeypatch.setattr(server_core, "REPLAY_STATE_RATIO", 0.0)
    monkeypatch.setattr(server_core.ServerCore, "_round_state", lambda self, r: np.frombuffer(b"not a state" * 9, np.uint8))
    rc = tiny(tmp_path, "bad", **{"num-server-rounds": 3, "run-eval-every": 3})
    with caplog.at_level("WARNING", logger="baffle"):
        run_inmemory(rc, 2)
    res = result(rc)
    assert res["plans"] == {"weights": 0, "replay": 2, "state": 4}
    assert res["failures"] == 4 and res["skipped_rounds"] == 2  # rounds 2 and 3 had no valid upload
    assert "server state does not load" in caplog.text


def test_replica_mismatch_falls_back_to_weights(tmp_path, monkeypatch):
    from baffle import plan_state

    real = plan_state.state_sha256
    calls = {"n": 0}

    def flaky(state):  # the 2nd digest computed (the server hashes once per round, then the first node checks its
        # replica in round 0) comes out wrong once: that node must refuse the round (error reply), and the server
        # must fall back to sending it weights
        calls["n"] += 1
        return b"x" * 32 if calls["n"] == 2 else real(state)

    monkeypatch.setattr(plan_state, "state_sha256", flaky)  # what server and nodes hash replicas with
    rc = tiny(tmp_path, "mm", transport="replay", **{"num-server-rounds": 4, "run-eval-every": 4})
    run_inmemory(rc, 2)
    res = result(rc)
    assert res["failures"] == 1 and res["rounds_done"] == 4 and res["skipped_rounds"] == 0


def test_a_subset_run_ships_only_the_trainable_tensors_and_matches_inprocess(tmp_path, monkeypatch):
    """model-trainable set: weights plans carry the trainable tensors and the frozen part's fingerprint, replay and
    state plans hash only those (plus the fingerprint), node replicas keep only them, and every transport still
    ends on `baffle run`'s weights, bit for bit."""
    from baffle.flower.node import STATE

    payloads = []
    real = server_core.ServerCore.plan_payload

    def spy(self, *a, **k):
        payloads.append(p := real(self, *a, **k))
        return p

    monkeypatch.setattr(server_core.ServerCore, "plan_payload", spy)
    sched = {"num-server-rounds": 3, "fraction-train": 2, "model-trainable": "classifier.*"}
    rcs = {t: tiny(tmp_path, t, transport=t, **sched) for t in ("weights", "replay", "auto")}
    grids = {t: run_inmemory(rc, 3) for t, rc in rcs.items()}
    weights_plans = [p for p in payloads if p.config["transport"] == "weights"]
    assert len(weights_plans) == 6
    for p in weights_plans:
        assert sorted(k for k in p.arrays if k != "seeds") == ["w/classifier.bias", "w/classifier.weight"]
        assert len(p.config["frozen-sha256"]) == 32
    summary, inproc = in_process(rcs["weights"])
    for t, rc in rcs.items():
        assert result(rc)["failures"] == 0 and result(rc)["weights_sha256"] == inproc, t
    # the cost model: 16-byte header, K seeds, the 650 head parameters, the fingerprint (as baffle run counts)
    assert summary["download_bytes_per_client_per_round"] == 16 + 8 * 8 + 4 * 650 + 32
    rows = (Path(rcs["weights"]["result-dir"]) / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["download_bytes_per_client"] == summary["download_bytes_per_client_per_round"]
    replicas = [ctx.state.config_records[STATE]["replica"] for ctx in grids["replay"].contexts.values()
                if "replica" in ctx.state.config_records.get(STATE, {})]
    assert replicas and all(len(r) < 4 * 26730 / 3 for r in replicas)  # the head and its Adam moments, not the model


def test_a_node_whose_frozen_weights_differ_refuses_the_plan(tmp_path, monkeypatch, caplog):
    from baffle.server.strategy import ServerStrategy

    monkeypatch.setattr(ServerStrategy, "frozen_sha256", lambda self: bytes(32))  # the server's claim, not the nodes'
    rc = tiny(tmp_path, "frozen", transport="weights", **{"num-server-rounds": 2, "run-eval-every": 2,
                                                          "model-trainable": "classifier.*"})
    with caplog.at_level("WARNING", logger="baffle"):
        run_inmemory(rc, 2)
    res = result(rc)
    assert res["failures"] == 4 and res["skipped_rounds"] == 2
    assert "plan was made for other frozen weights" in caplog.text


def test_round_survives_a_node_that_raises(tmp_path):
    rc = tiny(tmp_path, "drop")
    run_inmemory(rc, 3, node_extra={1: {"fail-at-round": 1}})
    res = result(rc)
    assert res["failures"] == 1 and res["rounds_done"] == 3 and res["skipped_rounds"] == 0
    assert res["messages_up"] == 3 * 3 - 1


def _round0_mean(monkeypatch, rc: dict, nodes: int, node_extra=None) -> np.ndarray:
    """The aggregated K-vector the server steps with in round 0 (plain or SecAgg+)."""
    seen: list[np.ndarray] = []
    real = server_core.ServerCore._count

    def spy(self, result, **kw):
        if result.aggregate is not None:
            seen.append(np.array(result.aggregate, dtype=np.float64))
        return real(self, result, **kw)

    monkeypatch.setattr(server_core.ServerCore, "_count", spy)
    run_inmemory(rc, nodes, node_extra=node_extra)
    monkeypatch.setattr(server_core.ServerCore, "_count", real)
    return seen[0]


@pytest.mark.parametrize("drop", [False, True])
def test_secagg_aggregate_equals_plain_mean_to_quantization_error(tmp_path, monkeypatch, drop):
    extra = {2: {"fail-at-round": 0}} if drop else None
    one = {"num-server-rounds": 1, "run-eval-every": 1, "secagg-bits": 16, "secagg-clip": 0.5}
    plain = _round0_mean(monkeypatch, tiny(tmp_path, f"p{drop}", **one), 4, extra)
    secure = _round0_mean(monkeypatch, tiny(tmp_path, f"s{drop}", secure=True, **one), 4, extra)
    step = QuantSpec(0.5, 16).step
    assert np.abs(secure - plain).max() <= step  # one rounding step at most (stochastic, unbiased)
    assert np.abs(plain).max() > 50 * step  # the comparison is not trivially within the step
    cos = secure @ plain / np.linalg.norm(secure) / np.linalg.norm(plain)
    assert cos > 0.9999
    rs = result(tiny(tmp_path, f"s{drop}"))
    assert rs["mode"] == "secagg+" and rs["rounds_done"] == 1 and rs["skipped_rounds"] == 0
    assert rs["failures"] == (1 if drop else 0)


def test_secagg_sums_multistep_s_times_k_vectors(tmp_path, monkeypatch):
    """baffle_multistep under SecAgg+: the server sees only the mean S x K vector, to quantization error."""
    one = {"num-server-rounds": 1, "run-eval-every": 1, "secagg-bits": 16, "secagg-clip": 0.5,
           "run-method": "baffle_multistep", "federation-local-steps": 2}
    plain = _round0_mean(monkeypatch, tiny(tmp_path, "p", **one), 3)
    secure = _round0_mean(monkeypatch, tiny(tmp_path, "s", secure=True, **one), 3)
    assert plain.shape == secure.shape == (2 * 8,)
    step = QuantSpec(0.5, 16).step
    assert np.abs(secure - plain).max() <= step and np.abs(plain).max() > 50 * step


def test_quantization_model_error_and_wraparound_check():
    rng = np.random.default_rng(0)
    vecs = rng.normal(0, 0.01, size=(5, 200)).astype(np.float32)
    w = np.full(5, 32.0)
    spec = QuantSpec(clip=0.1, bits=12)
    got = secure_mean_model(vecs, w, spec, max_weight=32.0)
    assert np.abs(got - vecs.mean(0)).max() <= spec.step
    coarse = secure_mean_model(vecs, w, QuantSpec(clip=0.1, bits=4), max_weight=32.0)
    assert np.abs(coarse - vecs.mean(0)).max() > spec.step  # fewer bits, visibly larger error
    QuantSpec(bits=22).check(1024)
    with pytest.raises(ValueError, match="wrap"):
        QuantSpec(bits=22).check(1025)


def test_node_with_other_baffle_or_noise_spec_is_refused(tmp_path, monkeypatch):
    from baffle.flower import client_app, versions

    ours = versions.local_versions()
    assert versions.mismatch(dict(ours), "node 1") is None
    why = versions.mismatch({**ours, "baffle": "0.0.9"}, "node 1")
    assert f"node 1 runs baffle 0.0.9, noise-spec {ours['noise-spec']}" in why and f"the server runs baffle {ours['baffle']}" in why
    assert "did not report its versions" in versions.mismatch(None, "node 2")
    calls = {"n": 0}

    def skewed():  # the first node to answer runs another noise spec
        calls["n"] += 1
        return {**ours, "noise-spec": "baffle-noise-v0"} if calls["n"] == 1 else dict(ours)

    monkeypatch.setattr(client_app, "local_versions", skewed)
    rc = tiny(tmp_path, "skew")
    run_inmemory(rc, 3)
    res = result(rc)
    assert res["rounds_done"] == 3 and res["failures"] == 0 and res["messages_up"] == 3 * 2  # partition 0 left out
    monkeypatch.setattr(client_app, "local_versions", lambda: {**ours, "baffle": "0.0.9"})
    with pytest.raises(RuntimeError, match=r"every node was refused: node \d+ runs baffle 0.0.9"):
        run_inmemory(tiny(tmp_path, "skew2"), 2)


def test_a_node_loads_only_its_partition_cached_on_disk(tmp_path, monkeypatch):
    import torch

    from baffle.data.partition import partition
    from baffle.flower import node
    from baffle.sim import factory

    monkeypatch.setenv("BAFFLE_CACHE", str(tmp_path / "cache"))
    cfg, _ = parse_run_config(tiny(tmp_path, "light"))
    train, _ = factory.load_data(cfg)
    d = cfg.data
    expected = train.subset(partition(train.y.numpy(), 3, d.partition, alpha=d.alpha, shards_per_client=d.shards_per_client,
                                      seed=cfg.run.seed)[1])
    splits = []
    real = factory.load_dataset
    monkeypatch.setattr(factory, "load_dataset", lambda name, split, **kw: splits.append(split) or real(name, split=split, **kw))
    node._partition_data.cache_clear()
    first = node.partition_data(cfg, 1, 3)
    assert splits == ["train"]  # never the test set
    assert torch.equal(first.x, expected.x) and torch.equal(first.y, expected.y) and first.num_classes == train.num_classes
    assert len(list((tmp_path / "cache" / "flower-partitions").glob("*-1-of-3.npz"))) == 1
    node._partition_data.cache_clear()  # a new ClientApp process: the partition file alone
    again = node.partition_data(cfg, 1, 3)
    assert splits == ["train"] and torch.equal(again.x, expected.x) and torch.equal(again.y, expected.y)
