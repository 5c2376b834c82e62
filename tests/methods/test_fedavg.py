"""FedAvg's local steps (``BPClient.local_sgd``) on a trainable subset: the same steps as backpropagating through
the whole model, without computing a gradient of any frozen parameter."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from baffle import estimator, plan_state
from baffle.baselines import BPClient
from baffle.data.dataset import Dataset
from baffle.models import build_model

TRAINABLE = ["classifier.*"]


def test_local_sgd_on_a_subset_matches_full_backprop_and_leaves_frozen_gradients_unset():
    gen = torch.Generator().manual_seed(0)
    data = Dataset(torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen), 10, "toy")
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=10)
    reference = copy.deepcopy(model)
    names = plan_state.plan_names(model, TRAINABLE)
    weights = {k: v.clone() for k, v in model.state_dict().items() if k in names}
    client = BPClient(0, data, np.arange(64), model, batch_size=8, seed=3, trainable=TRAINABLE)
    up = client.local_sgd(weights, 0, steps=3, lr=0.1, frozen_sha256=plan_state.frozen_sha256(model, names))
    assert sorted(up.weights) == sorted(names)
    frozen = [p for n, p in model.named_parameters() if n not in names]
    assert frozen and all(p.grad is None for p in frozen)  # no backward pass through the frozen layers

    # what the step was before: backward() through the whole model, the same minibatches
    twin = BPClient(0, data, np.arange(64), reference, batch_size=8, seed=3, trainable=TRAINABLE)
    params = [p for _, p in estimator.select_parameters(reference, TRAINABLE)]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for _ in range(3):
        x, y = twin.next_batch()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(reference(x), y).backward()
        opt.step()
    assert all(torch.equal(up.weights[k], reference.state_dict()[k]) for k in names)
    assert any(p.grad is not None for n, p in reference.named_parameters() if n not in names)  # what it cost
