"""ServerStrategy state with a trainable subset: a checkpoint stores only that of the model (plus the frozen part's
fingerprint; the EMA's shadow of the same subset, its frozen rest exactly the frozen model), resume refuses another base model, and whole-model states still load."""

from __future__ import annotations

import pytest
import torch

from baffle.config import Config
from baffle.nlp.pretrained import build_text_model
from baffle.plan_state import frozen_sha256
from baffle.records import checkpoint
from baffle.server.strategy import ServerStrategy
from baffle.sim.factory import load_subset_weights

HEAD = ["classifier.weight", "classifier.bias"]


def _strategy(trainable: list[str] | None = None, seed: int = 0) -> ServerStrategy:
    cfg = Config()
    cfg.apply_overrides(["optim.ema_decay=0.98"])
    cfg.model.trainable = ["classifier.*"] if trainable is None else trainable
    torch.manual_seed(seed)
    return ServerStrategy(build_text_model("bert_tiny", 2), cfg)


def _step(s: ServerStrategy, rounds: int = 3) -> None:
    """Stand-in for training rounds: move the trainable parameters, let the optimizer keep state, update the EMA."""
    for r in range(rounds):
        g = torch.Generator().manual_seed(r)
        for _, p in s.params:
            p.grad = torch.randn(p.shape, generator=g)
        s.optimizer.step()
        s._after_step(r)


def test_subset_checkpoint_round_trips_exactly_and_is_small(tmp_path):
    s = _strategy()
    _step(s)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"server": s.state_dict()})
    state = checkpoint.load(path)["server"]
    assert set(state["model"]) == set(HEAD) and set(state["ema"]["shadow"]) == set(HEAD)
    assert state["frozen_sha256"] == frozen_sha256(s.model, HEAD).hex()
    whole = sum(v.numel() * v.element_size() for v in s.model.state_dict().values())
    assert path.stat().st_size < 0.01 * whole  # the head twice (model and EMA) and the optimizer: no encoder
    # the EMA's frozen part is the frozen model bit for bit (averaging a value with itself rounds in float32)
    assert all(torch.equal(v, s.ema.shadow[k]) for k, v in s.model.state_dict().items() if k not in HEAD)

    fresh = _strategy()
    fresh.load_state_dict(state)
    for a, b in zip(s.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)
    assert all(torch.equal(s.ema.shadow[k], fresh.ema.shadow[k]) for k in s.ema.shadow)
    _step(s, 2), _step(fresh, 2)  # the optimizer state came back too: the next steps agree bit for bit
    assert all(torch.equal(a, b) for a, b in zip(s.model.parameters(), fresh.model.parameters()))


def test_resume_refuses_another_base_model_in_one_line():
    s = _strategy()
    state = s.state_dict()
    other = _strategy(seed=1)  # another random encoder: a different frozen part
    with pytest.raises(ValueError, match="other frozen weights") as e:
        other.load_state_dict(state)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="trains every tensor"):
        _strategy(trainable=[]).load_state_dict(state)
    wider = _strategy(trainable=["classifier.*", "*norm.*"])
    with pytest.raises(ValueError, match="other frozen weights|other trainable tensors"):
        wider.load_state_dict(state)


def test_whole_model_state_of_older_checkpoints_still_loads():
    s = _strategy()
    _step(s)
    old = s.state_dict()
    old.pop("frozen_sha256")
    old["model"] = {k: v.clone() for k, v in s.model.state_dict().items()}  # what checkpoints held before
    fresh = _strategy(seed=1)
    fresh.load_state_dict(old)
    assert all(torch.equal(a, b) for a, b in zip(s.model.state_dict().values(), fresh.model.state_dict().values()))
    assert all(torch.equal(s.ema.shadow[k], fresh.ema.shadow[k]) for k in s.ema.shadow)


def test_init_from_a_subset_checkpoint_needs_the_same_frozen_part(tmp_path):
    s = _strategy()
    _step(s)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"server": s.state_dict()})
    weights, frozen = checkpoint.load_init_weights(path)  # with an EMA: its subset and the fingerprint of the rest
    assert set(weights) == set(HEAD) and frozen == frozen_sha256(s.model, HEAD)
    assert all(torch.equal(weights[k], s.ema.shadow[k]) for k in HEAD)
    s.ema = None  # optim.ema_decay = 0: the model's subset and the fingerprint of the rest
    checkpoint.save(path, {"server": s.state_dict()})
    weights, frozen = checkpoint.load_init_weights(path)
    assert set(weights) == set(HEAD) and frozen == frozen_sha256(s.model, HEAD)

    torch.manual_seed(0)
    same = build_text_model("bert_tiny", 2)
    load_subset_weights(same, weights, frozen, str(path))
    assert all(torch.equal(same.state_dict()[k], v) for k, v in s.model.state_dict().items())
    torch.manual_seed(1)
    with pytest.raises(checkpoint.CheckpointError, match="stores only trained tensors and was made for other frozen weights"):
        load_subset_weights(build_text_model("bert_tiny", 2), weights, frozen, str(path))


def test_a_checkpoint_whose_ema_shadow_is_whole_loads_with_the_frozen_part_exact(tmp_path):
    """Checkpoints written before the shadow was a subset hold the whole shadow, its frozen entries an ulp off:
    resume and model.init take the trained entries from it and the frozen ones from the model."""
    s = _strategy()
    _step(s)
    old = s.state_dict()
    drifted = {k: v * (1 + 2**-23) if k not in HEAD else v for k, v in s.model.state_dict().items()}
    old["ema"] = {**old["ema"], "shadow": {**drifted, **{k: s.ema.shadow[k] for k in HEAD}}}
    fresh = _strategy()
    fresh.load_state_dict(old)
    assert all(torch.equal(s.ema.shadow[k], fresh.ema.shadow[k]) for k in s.ema.shadow)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"server": old})
    weights, frozen = checkpoint.load_init_weights(path)
    assert set(weights) == set(HEAD) and frozen == frozen_sha256(s.model, HEAD)
    lacking = {**old["ema"], "shadow": {k: v for k, v in old["ema"]["shadow"].items() if k != HEAD[0]}}
    with pytest.raises(ValueError, match="EMA shadow lacks 'classifier.weight'"):
        _strategy().load_state_dict({**old, "ema": lacking})


@pytest.mark.parametrize("bad", ["", "ab" * 31, "AB" * 32, "zz" * 32, 7])
def test_a_malformed_frozen_fingerprint_is_refused_in_one_line(tmp_path, bad):
    s = _strategy()
    state = {**s.state_dict(), "frozen_sha256": bad}
    with pytest.raises(ValueError, match="malformed frozen_sha256"):
        _strategy().load_state_dict(state)
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"server": state})
    with pytest.raises(checkpoint.CheckpointError, match="malformed frozen_sha256"):
        checkpoint.load_init_weights(path)
