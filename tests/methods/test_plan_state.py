"""What a plan carries when a subset trains (``baffle.plan_state``): only the trainable tensors (+ a fingerprint of
the frozen rest), the same final weights as shipping the whole model, and clear errors on a plan that does not fit."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from baffle import plan_state
from baffle.adapters import add_adapters
from baffle.models import build_model
from baffle.protocol.layout import matches
from baffle.protocol.messages import MessageError, WeightsUpload
from baffle.sim.loop import Simulation
from baffle.testing import tiny

METHODS = {
    "baffle": {},
    "baffle_multistep": {"run.method": "baffle_multistep", "federation.local_steps": 2},
    "baffle_local": {"run.method": "baffle_local", "federation.local_steps": 2},
    "fedsgd": {"run.method": "fedsgd"},
    "fedavg": {"run.method": "fedavg", "federation.local_steps": 2},
    "lora": {"model.adapter": "lora", "model.lora_rank": 2, "model.trainable": "*lora_*,classifier.*"},
}


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode() + v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(extra: dict) -> tuple[Simulation, dict]:
    sim = Simulation(tiny(3, **extra), None, progress=False)
    return sim, sim.run()


def test_a_subset_plan_carries_only_the_trainable_tensors_and_the_frozen_fingerprint():
    sim = Simulation(tiny(1), None, progress=False)
    s = sim.fed.strategy
    plan = s.plan(0, send_weights=True)
    trainable = [n for n, _ in s.model.named_parameters() if matches(n, sim.cfg.model.trainable)]
    assert list(plan.weights) == trainable == ["features.4.weight", "features.4.bias", "classifier.weight", "classifier.bias"]
    assert len(plan.frozen_sha256) == plan_state.FROZEN_SHA256_BYTES
    for k, v in plan.weights.items():  # copies: the server stepping later must not change a plan already sent
        assert torch.equal(v, s.model.state_dict()[k]) and v.data_ptr() != s.model.state_dict()[k].data_ptr()


def test_a_lora_plan_carries_the_adapters_and_the_head_only():
    torch.manual_seed(0)
    model = add_adapters(build_model("bert_tiny", num_classes=2), "lora", rank=2, seed=0)
    names = plan_state.plan_names(model, ["*lora_*", "classifier.*"])
    assert names and all("lora_" in n or n.startswith("classifier.") for n in names)
    assert sum(n.endswith("lora_A") for n in names) == sum(n.endswith("lora_B") for n in names) > 1
    frozen = [k for k in model.state_dict() if k not in names]
    assert any(k.endswith("weight.original") for k in frozen) and "bert.embeddings.word.weight" in frozen
    assert plan_state.tensor_nbytes(model, names) < plan_state.tensor_nbytes(model, tuple(model.state_dict())) / 10
    assert plan_state.plan_names(model, []) == tuple(model.state_dict())  # no subset: the whole state


@pytest.mark.parametrize("name", list(METHODS))
def test_shipping_only_the_trainable_tensors_gives_the_same_weights_as_shipping_the_model(name, monkeypatch):
    """The behaviour before this change, every plan and weights upload carrying the whole state dict, is the
    rule ``plan_names = the whole state dict``: both runs must end on the same weights and EMA, bit for bit."""
    sim_new, new = run(METHODS[name])
    with monkeypatch.context() as m:
        m.setattr(plan_state, "plan_names", lambda model, trainable: tuple(model.state_dict()))
        sim_old, old = run(METHODS[name])
    s_new, s_old = sim_new.fed.strategy, sim_old.fed.strategy
    assert s_old.frozen_sha256() is None and s_new.frozen_sha256() is not None  # the patch took effect
    assert new["download_bytes_per_client_per_round"] < old["download_bytes_per_client_per_round"]
    assert digest(s_new.model.state_dict()) == digest(s_old.model.state_dict())
    names, ev_new, ev_old = s_new.state_names, dict(s_new.eval_weights()), dict(s_old.eval_weights())
    assert digest({k: ev_new[k] for k in names}) == digest({k: ev_old[k] for k in names})
    # the EMA's frozen rest is the frozen model exactly (the whole-state rule averages it too, which rounds)
    assert all(torch.equal(ev_new[k], v) for k, v in s_new.model.state_dict().items() if k not in names)


@pytest.mark.parametrize("name", ["baffle", "fedsgd", "fedavg"])
def test_the_frozen_part_never_changes_during_a_run(name):
    sim = Simulation(tiny(3, **METHODS[name]), None, progress=False)
    s = sim.fed.strategy
    before = {k: v.clone() for k, v in s.model.state_dict().items() if k not in s.plan_names}
    sim.run()
    after = s.model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())
    client_state = sim.fed.clients[0].model.state_dict()  # the clients' model kept its own frozen build, identical
    assert all(torch.equal(v, client_state[k]) for k, v in before.items())


# ---- a plan that does not fit is refused, naming the tensor, and changes nothing --------------------------------
@pytest.fixture
def client_and_plan():
    sim = Simulation(tiny(1), None, progress=False)
    client = sim.fed.clients[0]
    with torch.no_grad():
        for k in client.plan_names():
            client.model.state_dict()[k].add_(1.0)  # make the model differ from the plan, so a partial load would show
    return client, sim.fed.strategy.plan(0, send_weights=True)


def _bad(plan, kind: str) -> tuple[dict, bytes | None]:
    w, frozen = dict(plan.weights), plan.frozen_sha256
    if kind == "missing":
        del w["classifier.bias"]
    elif kind == "unexpected":
        w["classifier.scale"] = torch.zeros(3)
    elif kind == "frozen_sent":
        w["features.1.weight"] = torch.zeros(64, 196)
    elif kind == "shape":
        w["classifier.bias"] = torch.zeros(11)
    elif kind == "dtype":
        w["classifier.bias"] = w["classifier.bias"].double()
    elif kind == "fingerprint":
        frozen = bytes(32)
    elif kind == "no_fingerprint":
        frozen = None
    return w, frozen


@pytest.mark.parametrize("kind, match", [
    ("missing", "plan lacks tensor 'classifier.bias'"),
    ("unexpected", "unexpected tensor 'classifier.scale': it is not in this client's model"),
    ("frozen_sent", "unexpected tensor 'features.1.weight': it is frozen on this client"),
    ("shape", r"'classifier.bias' has shape \(11,\), this client's model has \(10,\)"),
    ("dtype", "'classifier.bias' has dtype torch.float64, this client's model has torch.float32"),
    ("fingerprint", "plan was made for other frozen weights"),
    ("no_fingerprint", "plan carries no fingerprint of the frozen weights"),
])
def test_a_plan_that_does_not_fit_is_refused_by_name_and_loads_nothing(client_and_plan, kind, match):
    client, plan = client_and_plan
    weights, frozen = _bad(plan, kind)
    before = {k: v.clone() for k, v in client.model.state_dict().items()}
    with pytest.raises(MessageError, match=match) as err:
        client.load_plan(weights, frozen)
    assert "\n" not in str(err.value)
    assert all(torch.equal(v, client.model.state_dict()[k]) for k, v in before.items())
    client.load_plan(plan.weights, plan.frozen_sha256)  # the plan itself loads
    assert all(torch.equal(v, client.model.state_dict()[k]) for k, v in plan.weights.items())


def test_a_client_whose_frozen_part_changed_is_refused_even_after_it_hashed_it():
    """The fingerprint is cached per model, keyed by the tensors' version counters: an in-place write to a
    frozen tensor after the first check is caught by the next plan."""
    sim = Simulation(tiny(1), None, progress=False)
    client, plan = sim.fed.clients[0], sim.fed.strategy.plan(0, send_weights=True)
    client.load_plan(plan.weights, plan.frozen_sha256)
    with torch.no_grad():
        client.model.features[1].weight[0, 0] += 1e-6
    with pytest.raises(MessageError, match="other frozen weights"):
        client.load_plan(plan.weights, plan.frozen_sha256)


def test_the_server_refuses_a_weights_upload_that_is_not_the_plan_tensors():
    sim = Simulation(tiny(1, **METHODS["fedavg"]), None, progress=False)
    s = sim.fed.strategy
    full = WeightsUpload(0, 0, s.global_weights(), 10)
    with pytest.raises(MessageError, match="unexpected tensor 'features.1.weight'"):
        s.apply_weights(0, [full])
    short = WeightsUpload(0, 0, {k: v for k, v in s.plan_weights().items() if k != "classifier.weight"}, 10)
    with pytest.raises(MessageError, match="plan lacks tensor 'classifier.weight'"):
        s.apply_weights(0, [short])


def test_a_plan_with_the_whole_model_when_a_subset_trains_is_a_mismatch_not_a_silent_load():
    sim = Simulation(tiny(1), None, progress=False)
    client = sim.fed.clients[0]
    with pytest.raises(MessageError, match="unexpected tensor"):
        client.load_plan(sim.fed.strategy.global_weights(), sim.fed.strategy.frozen_sha256())
    assert np.isfinite(sim.fed.strategy.plan_nbytes())
