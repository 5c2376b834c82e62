"""Backprop clients over a frozen bottom read its rows from the batched engine's feature cache
(``BPClient._logits`` -> ``BatchedEngine.frozen_top`` -> ``Program.top``): the FedSGD / FedAvg twins of a
``model.trainable`` run compute what full-model autograd computes, and put each sample through the bottom once."""

from __future__ import annotations

import copy

import numpy as np
import torch

from baffle import plan_state
from baffle.baselines import BPClient
from baffle.data.dataset import Dataset
from baffle.engine import BatchedEngine, LoopEngine
from baffle.models import build_model

TRAINABLE = ["classifier.*"]


def _setup(name: str, shape: tuple[int, int, int], n: int = 48):
    gen = torch.Generator().manual_seed(0)
    data = Dataset(torch.randn(n, *shape, generator=gen), torch.randint(0, 10, (n,), generator=gen), 10, "toy")
    torch.manual_seed(0)
    model = build_model(name, in_channels=shape[0], image_size=shape[1])
    return data, model


def _count_bottom_rows(model: torch.nn.Module) -> dict[str, int]:
    rows = {"n": 0}
    model.features[0].register_forward_pre_hook(lambda m, a: rows.__setitem__("n", rows["n"] + a[0].shape[0]))
    return rows


def test_fedsgd_gradient_from_stored_rows_equals_full_backprop():
    """rf_white with its classifier trained: each step's gradient equals full-model autograd's (a loop-engine client,
    same minibatches); the cached client runs its bottom once per sample, not once per step."""
    data, model = _setup("rf_white", (3, 32, 32))
    reference = copy.deepcopy(model)
    cached = BPClient(0, data, np.arange(48), model, batch_size=16, seed=3, trainable=TRAINABLE, engine=BatchedEngine(64))
    plain = BPClient(0, data, np.arange(48), reference, batch_size=16, seed=3, trainable=TRAINABLE, engine=LoopEngine())
    calls = _count_bottom_rows(model)
    for _ in range(6):  # two passes over the 48 samples
        g, count = cached.gradient(None)
        ref, ref_count = plain.gradient(None)
        assert count == ref_count == 16
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)
    assert cached.engine.features.misses == 48 and cached.engine.features.hits == 48
    assert calls["n"] == 48  # full backprop: 96 (6 steps x 16)


def test_fedavg_local_steps_from_stored_rows_match_full_backprop():
    """FedAvg's local SGD on rf_cnn's classifier: the same weights as stepping through the whole model."""
    data, model = _setup("rf_cnn", (1, 28, 28))
    reference = copy.deepcopy(model)
    names = plan_state.plan_names(model, TRAINABLE)
    weights = {k: v.clone() for k, v in model.state_dict().items() if k in names}
    sha = plan_state.frozen_sha256(model, names)
    cached = BPClient(0, data, np.arange(48), model, batch_size=8, seed=3, trainable=TRAINABLE, engine=BatchedEngine(64))
    plain = BPClient(0, data, np.arange(48), reference, batch_size=8, seed=3, trainable=TRAINABLE, engine=LoopEngine())
    up = cached.local_sgd(weights, 0, steps=4, lr=0.1, frozen_sha256=sha)
    ref = plain.local_sgd(weights, 0, steps=4, lr=0.1, frozen_sha256=sha)
    for k in names:
        torch.testing.assert_close(up.weights[k], ref.weights[k], rtol=1e-4, atol=1e-6)
    assert cached.engine.features.misses == 32


def test_whole_model_training_or_a_cache_of_zero_runs_the_model():
    """No frozen bottom (every parameter trains) or the cache off: the model itself runs, as before."""
    data, model = _setup("rf_cnn", (1, 28, 28))
    calls = _count_bottom_rows(model)
    whole = BPClient(0, data, np.arange(48), model, batch_size=8, seed=3, engine=BatchedEngine(64))
    whole.gradient(None)
    off = BPClient(0, data, np.arange(48), model, batch_size=8, seed=3, trainable=TRAINABLE,
                   engine=BatchedEngine(64, feature_cache_mb=0))
    off.gradient(None)
    assert calls["n"] == 16 and len(whole.engine.features) == 0 and len(off.engine.features) == 0
