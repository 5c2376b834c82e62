"""The client is forward-only: no graph, no drift, nothing but K scalars and a count leaves it."""

import numpy as np
import pytest
import torch

from baffle import estimator
from baffle.protocol import noise
from baffle.client import Client, load_weights
from baffle.data.registry import load_dataset
from baffle.engine.loop import loss_differences
from baffle.protocol.messages import RoundPlan, Upload
from baffle.models import build_model


@pytest.fixture
def client():
    torch.manual_seed(0)
    data = load_dataset("synthetic", split="train", num_samples=200)
    model = build_model("lenet")
    return Client(3, data, np.arange(100), model, batch_size=16, seed=1)


def _plan(rnd=0, K=8, weights=None, scheme="forward"):
    return RoundPlan(rnd, noise.round_seeds(0, rnd, K), 1e-3, scheme, 16, weights)


def test_upload_is_K_float32_and_a_count(client):
    up = client.step(_plan(K=8))
    assert isinstance(up, Upload)
    assert up.loss_diffs.dtype == np.float32 and up.loss_diffs.shape == (8,)
    assert up.num_samples == 16 and up.client_id == 3 and up.round == 0
    assert up.nbytes == 16 + 4 * 8 == len(up.to_bytes())
    back = Upload.from_bytes(up.to_bytes())
    assert back.client_id == 3 and np.array_equal(back.loss_diffs, up.loss_diffs)


def test_step_leaves_weights_bit_identical(client):
    before = {k: v.clone() for k, v in client.model.state_dict().items()}
    client.step(_plan(K=20, scheme="central"))
    client.step(_plan(rnd=1, K=20))
    for k, v in client.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_client_cannot_build_an_autograd_graph(client, monkeypatch):
    calls = []
    real_forward = client.model.forward

    def spy(x):
        out = real_forward(x)
        calls.append((torch.is_inference_mode_enabled(), out.requires_grad, out.grad_fn))
        return out

    monkeypatch.setattr(client.model, "forward", spy)

    def no_backward(*a, **k):
        raise AssertionError("backward called on a BAFFLE client")

    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    client.step(_plan(K=4))
    assert calls, "model never ran"
    assert all(inf and not rg and fn is None for inf, rg, fn in calls), calls
    assert all(p.grad is None for p in client.model.parameters())


def test_sent_weights_are_loaded_and_mismatches_refused(client):
    other = build_model("lenet")
    w = {k: v + 1.0 for k, v in other.state_dict().items()}
    client.step(_plan(weights=w))
    for k, v in client.model.state_dict().items():
        assert torch.equal(v, w[k])
    with pytest.raises(ValueError, match="shape"):
        bad = dict(w)
        bad["classifier.weight"] = torch.zeros(3, 3)
        load_weights(client.model, bad)
    with pytest.raises(ValueError, match="missing"):
        load_weights(client.model, {})


def test_same_seeds_same_batch_same_answer_as_the_estimator(client):
    up = client.step(_plan(K=6))
    # replay: a fresh client with the same sampler seed draws the same batch
    twin = Client(3, client.data, np.arange(100), client.model, batch_size=16, seed=1)
    x, y = twin.next_batch()
    params = estimator.select_parameters(client.model)
    ref = loss_differences(client.model, params, x, y, noise.round_seeds(0, 0, 6), 1e-3, "forward")
    np.testing.assert_allclose(up.loss_diffs, ref, rtol=1e-5, atol=1e-7)


def test_client_without_data_is_refused():
    with pytest.raises(ValueError, match="no training samples"):
        Client(0, load_dataset("synthetic", num_samples=10), np.array([], dtype=int), build_model("mlp"), batch_size=4, seed=0)
