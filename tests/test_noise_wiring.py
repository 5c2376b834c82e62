"""estimator.noise reaches every party: the plan carries it, clients perturb with it, the server rebuilds with it.

A client and a server disagreeing on the kind would still train (on garbage estimates), so nothing but a
test notices; here the torch client, the ONNX client and the server are each checked against the kind.
"""

import numpy as np
import pytest
import torch

from baffle.engine.loop import loss_differences
from baffle.estimator import num_elements, select_parameters
from baffle.protocol import noise
from baffle.reconstruct import reconstruct
from baffle.sim.loop import Simulation
from baffle.testing import tiny


def _weights(sim) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in sim.fed.strategy.model.parameters()])


@pytest.mark.parametrize("kind", ["v2-gauss", "v2-rademacher"])
def test_plan_client_and_server_use_the_configured_kind(kind):
    sim = Simulation(tiny(1, **{"estimator.noise": kind, "estimator.engine": "loop"}), None, progress=False)
    strategy = sim.fed.strategy
    plan = strategy.plan(0)
    assert plan.noise == kind
    client = sim.fed.clients[0]
    x, y = client.next_batch()
    params = select_parameters(client.model, client.trainable)
    d = loss_differences(client.model, params, x, y, plan.seeds, plan.sigma, plan.scheme, noise=kind)
    d_v1 = loss_differences(client.model, params, x, y, plan.seeds, plan.sigma, plan.scheme, noise="v1")
    assert not np.allclose(d, d_v1)  # the kind changes what the client measures
    g = reconstruct(d, plan.seeds, plan.sigma, num_elements(params), noise=kind)
    assert np.array_equal(g, reconstruct(d, plan.seeds, plan.sigma, num_elements(params), noise=kind, threads=2))


@pytest.mark.parametrize("kind", ["v2-gauss", "v2-rademacher"])
def test_torch_and_onnx_clients_train_the_same_with_v2(kind):
    runs = {}
    for name, extra in {"torch": {}, "onnx": {"federation.onnx_clients": 4}, "v1": {"estimator.noise": "v1"}}.items():
        cfg = tiny(3, **{"estimator.noise": kind, "estimator.engine": "loop", **extra})
        sim = Simulation(cfg, None, progress=False)
        sim.run()
        runs[name] = _weights(sim)
    assert torch.allclose(runs["torch"], runs["onnx"], atol=1e-5)  # same directions, float32 rounding apart
    assert not torch.allclose(runs["torch"], runs["v1"], atol=1e-5)
