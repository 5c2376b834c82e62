"""The estimate is right: it points along the true gradient, and the server can rebuild it from scalars."""

import numpy as np
import torch
import torch.nn.functional as F

from baffle import estimator
from baffle.engine.loop import loss_differences
from baffle.protocol import noise
from baffle.reconstruct import reconstruct


def _problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Hardswish(), torch.nn.Linear(8, 3))
    x = torch.randn(64, 12)
    y = torch.randint(0, 3, (64,))
    params = estimator.select_parameters(model)
    loss = F.cross_entropy(model(x), y)
    true = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [p for _, p in params])]).numpy()
    return model, params, x, y, true


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _estimate(model, params, x, y, K, sigma, scheme, rnd=0):
    seeds = noise.round_seeds(42, rnd, K)
    d = loss_differences(model, params, x, y, seeds, sigma, scheme)
    return reconstruct(d, seeds, sigma, estimator.num_elements(params))


def test_cosine_with_autograd_rises_with_K_and_is_high_for_large_K():
    model, params, x, y, true = _problem()
    n = estimator.num_elements(params)  # 131
    cos = {K: np.mean([_cos(_estimate(model, params, x, y, K, 1e-3, "central", r), true) for r in range(3)]) for K in (4, 64, 2048)}
    assert cos[4] < cos[64] < cos[2048]
    assert cos[2048] > 0.95, cos
    # sqrt(K / (K + n)) is the theoretical cosine for Gaussian directions
    assert abs(cos[64] - np.sqrt(64 / (64 + n))) < 0.15


def test_twin_point_beats_forward_at_equal_forward_passes_when_curvature_matters():
    # Forward differences carry a (sigma/2) eps^T H eps term; central ones cancel it. At a sigma where that
    # term is visible, 2K forwards spent on K central differences beat 2K-1 forwards of forward differences.
    model, params, x, y, true = _problem(1)
    sigma = 0.3
    fwd = np.mean([_cos(_estimate(model, params, x, y, 255, sigma, "forward", r), true) for r in range(4)])
    cen = np.mean([_cos(_estimate(model, params, x, y, 128, sigma, "central", r), true) for r in range(4)])
    assert cen > fwd + 0.05, (cen, fwd)


def test_aggregate_of_scalars_equals_average_of_estimates():
    model, params, _, _, _ = _problem()
    n = estimator.num_elements(params)
    seeds = noise.round_seeds(0, 3, 16)
    torch.manual_seed(5)
    batches = [(torch.randn(b, 12), torch.randint(0, 3, (b,))) for b in (10, 30, 20)]
    diffs = [loss_differences(model, params, xb, yb, seeds, 1e-2) for xb, yb in batches]
    w = np.array([10, 30, 20]) / 60
    from_scalars = reconstruct(np.float32(w @ np.stack(diffs)), seeds, 1e-2, n)
    from_estimates = sum(wi * reconstruct(d, seeds, 1e-2, n) for wi, d in zip(w, diffs))
    np.testing.assert_allclose(from_scalars, from_estimates, rtol=1e-4, atol=1e-6)


def test_reconstruct_chunking_does_not_change_the_result():
    seeds = noise.round_seeds(1, 1, 10)
    d = np.linspace(-1, 1, 10).astype(np.float32)
    a = reconstruct(d, seeds, 0.1, 500, chunk=3)
    b = reconstruct(d, seeds, 0.1, 500, chunk=10)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    manual = (d.astype(np.float64) @ noise.directions(seeds, 500)) / (10 * 0.1)
    np.testing.assert_allclose(a, manual, rtol=1e-5)


def test_perturb_restore_is_bit_identical():
    model, params, x, y, _ = _problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_differences(model, params, x, y, noise.round_seeds(0, 0, 50), 0.37, "central")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_trainable_filter_selects_and_rejects_typos():
    model, _, _, _, _ = _problem()
    names = [n for n, _ in estimator.select_parameters(model, ["2.*"])]
    assert names == ["2.weight", "2.bias"]
    import pytest

    with pytest.raises(ValueError, match="matches no parameter"):
        estimator.select_parameters(model, ["fc.*"])


def test_only_selected_parameters_move():
    model, _, x, y, _ = _problem()
    params = estimator.select_parameters(model, ["2.bias"])
    d = loss_differences(model, params, x, y, noise.round_seeds(0, 0, 8), 1e-2)
    g = reconstruct(d, noise.round_seeds(0, 0, 8), 1e-2, 3)
    assert g.shape == (3,)
