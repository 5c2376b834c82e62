"""rf_white (baffle.models_rf.WhitenedRandomFeatures): the frozen whitened random features of issue 14's CIFAR-10 route."""

import numpy as np
import pytest
import torch

from baffle import estimator
from baffle.engine import BatchedEngine
from baffle.engine.loop import loss_differences
from baffle.models import build_model, num_parameters
from baffle.models_rf import RF_WHITE, WhitenedRandomFeatures, patch_prior
from baffle.protocol import noise

ATOL = 2e-6  # float32 rounding of a loss difference (tests/engine/test_batched.py)


def _filters(model: WhitenedRandomFeatures) -> torch.Tensor:
    conv = model.features[0]
    return conv.weight.detach().double().reshape(conv.out_channels, -1)


def test_shape_parameter_count_and_seeded_rebuild():
    """128 filters, each with both signs, pooled to 3x3: 2,304 features and a 23,050-parameter classifier on 32x32
    colour images; 28x28 grey images work too. The same seed rebuilds the same filters (every party rebuilds the
    frozen part from run.seed), another seed draws others."""
    model = build_model("rf_white", in_channels=3)
    assert RF_WHITE["filters"] == 128 and num_parameters(model.classifier) == 2_304 * 10 + 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert build_model("rf_white", in_channels=1, image_size=28)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    torch.manual_seed(5)
    a = build_model("rf_white", in_channels=3)
    torch.manual_seed(5)
    b = build_model("rf_white", in_channels=3)
    torch.manual_seed(6)
    c = build_model("rf_white", in_channels=3)
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    with pytest.raises(ValueError, match="at least 7x7"):
        build_model("rf_white", in_channels=3, image_size=6)


def test_filters_come_in_sign_pairs_with_the_threshold_in_the_bias():
    """Channel f and channel f + 128 are w and -w, both with bias -threshold: relu(z - t) and relu(-z - t)."""
    torch.manual_seed(0)
    model = build_model("rf_white", in_channels=3)
    w = _filters(model)
    assert torch.equal(w[:128], -w[128:])
    assert torch.all(model.features[0].bias == -RF_WHITE["threshold"])


def test_whitened_filters_have_unit_prior_variance_and_measure_different_things():
    """Each response z = w . patch has variance 1 under the patch prior, and the filters are spread over the
    prior's directions: plain random filters mostly measure the same smooth, low-frequency component of a patch
    (their responses correlate strongly), whitened ones do not. This is why rf_white's features carry CIFAR-10
    further than rf_cnn's (docs/cifar.md)."""
    torch.manual_seed(0)
    model = build_model("rf_white", in_channels=3)
    prior = patch_prior(3, 5, RF_WHITE["corr_length"])
    w = _filters(model)[:128]
    cov = w @ prior @ w.T
    np.testing.assert_allclose(torch.diagonal(cov).numpy(), 1.0, rtol=1e-6)  # float32 weights

    def mean_abs_corr(filters: torch.Tensor) -> float:
        c = filters @ prior @ filters.T
        d = torch.diagonal(c).rsqrt()
        corr = c * d[:, None] * d[None, :]
        return float(corr[~torch.eye(len(c), dtype=torch.bool)].abs().mean())

    plain = torch.randn(128, 75, generator=torch.Generator().manual_seed(0)).double()
    assert mean_abs_corr(plain) > 0.3  # random filters: the shared smooth directions dominate (0.44 here)
    assert mean_abs_corr(w) < 0.5 * mean_abs_corr(plain)  # 0.12


def test_batched_engine_with_feature_cache_gives_the_loop_loss_differences():
    """Classifier-only forward-only training: the batched engine (frozen features computed once, then kept per
    row) answers what the reference loop answers, on a second call partly from stored rows."""
    torch.manual_seed(1)
    model = build_model("rf_white", in_channels=3)
    params = estimator.select_parameters(model, ["classifier.*"])
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 3, 32, 32, generator=g), torch.randint(0, 10, (40,), generator=g)
    eng = BatchedEngine(64)
    seeds = noise.round_seeds(0, 1, 9)
    eng(model, params, x[:24], y[:24], seeds, 1e-3)
    got = eng(model, params, x[8:], y[8:], seeds, 1e-3)
    np.testing.assert_allclose(got, loss_differences(model, params, x[8:], y[8:], seeds, 1e-3, "forward"), rtol=0, atol=ATOL)
    assert eng.features.hits == 16 and eng.features.misses == 24 + 16
