"""Upload validation: every bad upload is rejected with its own reason, counted, and never touches the model."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch

from baffle.protocol.messages import MessageError, Upload
from baffle.sim.rounds import RoundRunner
from baffle.sim.loop import Simulation
from baffle.server.validation import MAX_ABS_LOSS_DIFF, REJECT_CODES, upload_check
from baffle.testing import tiny

K, BS = 16, 16


def good(cid=0, rnd=3, **kw):
    u = Upload(cid, rnd, np.linspace(-1e-3, 1e-3, K).astype(np.float32), BS)
    return dataclasses.replace(u, **kw)


BAD = {
    "malformed": lambda: "not an upload",
    "bad_client_id": lambda: good(cid=-2),
    "unknown_sender": lambda: good(cid=7),
    "bad_round": lambda: good(rnd="3"),
    "stale_round": lambda: good(rnd=2),
    "future_round": lambda: good(rnd=4),
    "wrong_type": lambda: good(loss_diffs=[0.0] * K),
    "wrong_dtype": lambda: good(loss_diffs=np.zeros(K, np.float64)),
    "wrong_length": lambda: good(loss_diffs=np.zeros(K + 1, np.float32)),
    "non_finite": lambda: good(loss_diffs=np.full(K, np.nan, np.float32)),
    "magnitude": lambda: good(loss_diffs=np.full(K, 2 * MAX_ABS_LOSS_DIFF, np.float32)),
    "bad_sample_count": lambda: good(num_samples=10**9),  # would outvote every honest client in the mean
}


def _snapshot(strategy):
    state = strategy.state_dict()
    flat = {f"model.{k}": v.clone() for k, v in state["model"].items()}
    flat.update({f"ema.{k}": v.clone() for k, v in state["ema"]["shadow"].items()})
    for i, st in state["optimizer"]["state"].items():
        flat.update({f"opt.{i}.{k}": torch.as_tensor(v).clone() for k, v in st.items()})
    return flat


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_every_reason_has_a_test_and_a_code():
    assert set(BAD) | {"duplicate"} == set(REJECT_CODES)


@pytest.mark.parametrize("code", sorted(BAD))
def test_each_bad_upload_is_rejected_with_its_reason(code):
    problem = upload_check(BAD[code](), 3, K, {0, 1, 2}, set(), max_samples=BS)
    assert problem is not None and problem[0] == code, problem
    assert len(problem[1]) > 10  # a sentence a person can act on
    assert upload_check(good(), 3, K, {0, 1, 2}, set(), max_samples=BS) is None


def test_duplicate_sender_is_rejected_once_accepted_once():
    cfg = tiny()
    sim = Simulation(cfg, None, progress=False)
    ok, rejected = sim.fed.strategy.validate([good(1), good(1)], 3, {0, 1})
    assert len(ok) == 1 and [r.code for r in rejected] == ["duplicate"]


def test_all_bad_round_is_skipped_logged_counted_and_model_bit_identical(tmp_path, monkeypatch, caplog):
    cfg = tiny(rounds=2, **{"run.eval_every": 1})
    sim = Simulation(cfg, tmp_path, progress=False)
    sim.runner.run_round(0)  # a real step first, so the optimizer and EMA have state to protect
    before = _snapshot(sim.fed.strategy)
    bad_by_client = ["magnitude", "non_finite", "future_round", "wrong_length"]

    def hostile_uploads(self, sampled, round_idx):
        return [
            dataclasses.replace(BAD[code](), client_id=cid, round=round_idx + (code == "future_round"))
            for cid, code in zip(sampled, bad_by_client)
        ]

    monkeypatch.setattr(RoundRunner, "client_uploads", hostile_uploads)
    with caplog.at_level(logging.WARNING, logger="baffle"):
        result = sim.runner.run_round(1)
    assert result.skipped and result.accepted == 0
    assert sorted(r.code for r in result.rejected) == sorted(bad_by_client)
    for code in bad_by_client:
        assert any(f"[{code}]" in m for m in caplog.messages), code
    _same(before, _snapshot(sim.fed.strategy))
    row = sim.evaluate(2)
    assert row["rejected_by_reason"] == {c: 1 for c in bad_by_client}
    assert row["round_rejected_by_reason"] == {c: 1 for c in bad_by_client} and row["round_skipped"]
    assert row["skipped_rounds"] == 1 and row["rejected_uploads"] == 4


def test_rejections_are_written_per_reason_to_metrics(tmp_path, monkeypatch):
    cfg = tiny(rounds=2, **{"run.eval_every": 1})
    real = RoundRunner.client_uploads

    def one_liar(self, sampled, round_idx):
        ups = real(self, sampled, round_idx)
        return [dataclasses.replace(ups[0], loss_diffs=np.full(K, np.inf, np.float32))] + ups[1:]

    monkeypatch.setattr(RoundRunner, "client_uploads", one_liar)
    Simulation(cfg, tmp_path, progress=False).run()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["rejected_by_reason"] for r in rows] == [{"non_finite": 1}, {"non_finite": 2}]
    assert [r["round_accepted"] for r in rows] == [3, 3]
    assert json.loads((tmp_path / "summary.json").read_text())["rejected_by_reason"] == {"non_finite": 2}


def test_wire_messages_are_decoded_then_validated(tmp_path):
    sim = Simulation(tiny(), None, progress=False)
    strategy = sim.fed.strategy
    blobs = [
        good(0).to_bytes(),
        good(1).to_bytes()[:-1],  # torn
        b"\x00" * 3,  # shorter than a header
        good(2, loss_diffs=np.full(K, np.nan, np.float32)).to_bytes(),
        Upload(3, 3, np.zeros(K + 2, np.float32), BS).to_bytes(),  # wrong K: framing is fine, length is not
    ]
    before = _snapshot(strategy)
    ok, rejected = strategy.validate_bytes(blobs, 3, {0, 1, 2, 3})
    assert [u.client_id for u in ok] == [0]
    assert [r.code for r in rejected] == ["malformed", "malformed", "non_finite", "wrong_length"]
    _same(before, _snapshot(strategy))


def test_from_bytes_rejects_non_bytes_and_wrong_k():
    with pytest.raises(MessageError, match="must be bytes"):
        Upload.from_bytes("text")  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="expects 8"):
        Upload.from_bytes(good().to_bytes(), expected_k=8)
    assert Upload.from_bytes(bytearray(good().to_bytes()), expected_k=K).num_samples == BS


def test_audit_twin_federations_never_diverge():
    """benchmarks/validation_audit.py in small: bad uploads next to honest ones change nothing, bit for bit."""
    from baffle.testing.audit import audit

    res = audit(rounds=5)
    assert res["injected_bad_uploads"] == 60 and res["rejected"] == 60
    assert res["accepted_bad_uploads"] == 0 and res["corrupted_rounds"] == 0
    assert res["every_rejection_has_its_own_reason"] and res["rounds_skipped_all_bad"] == 1


def test_aggregating_no_upload_is_a_clear_error_not_a_numpy_one():
    from baffle.models import build_model
    from baffle.server.strategy import ServerStrategy

    strategy = ServerStrategy(build_model("mlp"), tiny())
    with pytest.raises(ValueError, match="at least one validated upload"):
        strategy.aggregate_diffs([])
