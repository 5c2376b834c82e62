"""The batched engine's feature cache (engine/batched/feature_cache.py): a frozen bottom's rows kept across calls."""

import numpy as np
import pytest
import torch

from baffle import estimator
from baffle.config import Config, ConfigError
from baffle.engine import BatchedEngine, engine_for
from baffle.engine.batched.program import Program
from baffle.engine.loop import loss_differences
from baffle.models import build_model
from baffle.protocol import noise

ATOL = 2e-6  # float32 rounding of a loss difference (tests/engine/test_batched.py)


def _rf(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("rf_cnn", image_size=28)
    return model, estimator.select_parameters(model, ["classifier.*"])


def _pool(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _rounds(n_rounds: int, pool_size: int, clients: int, batch: int, seed: int = 2):
    rng = np.random.default_rng(seed)
    return [[rng.choice(pool_size, batch, replace=False) for _ in range(clients)] for _ in range(n_rounds)]


def test_cached_rounds_give_the_uncached_loss_differences_and_skip_seen_rows(monkeypatch):
    """Rounds drawing overlapping minibatches from one pool: every round's K-vectors equal an uncached engine's,
    and the bottom runs only on rows no earlier call has seen (counted where the engine calls it)."""
    model, params = _rf()
    x, y = _pool(300)
    cached, plain = BatchedEngine(64), BatchedEngine(64, feature_cache_mb=0)
    rows = {"n": 0}  # rows the cached engine puts through the frozen bottom
    real = Program.prefix

    def counting(self, xs, shared):
        if counting.on:
            rows["n"] += xs.shape[0]
        return real(self, xs, shared)

    monkeypatch.setattr(Program, "prefix", counting)
    seen: set[int] = set()
    for r, picks in enumerate(_rounds(5, 300, clients=3, batch=40)):
        seeds = noise.round_seeds(0, r + 1, 9)
        batches = [(x[i], y[i]) for i in picks]
        counting.on = True
        got = cached.multi_client(model, params, batches, seeds, 1e-3)
        counting.on = False
        ref = plain.multi_client(model, params, batches, seeds, 1e-3)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
        assert rows["n"] == sum(int(i) not in seen for p in picks for i in p)  # a row drawn twice in one call: twice
        rows["n"] = 0
        seen |= {int(i) for p in picks for i in p}
    assert cached.features.hits > 0 and len(cached.features) == len(seen)
    assert len(plain.features) == 0 and plain.features.hits == 0


def test_cached_losses_equal_the_reference_loop():
    """The cache's rows give the reference loop's loss differences (not only the uncached engine's)."""
    model, params = _rf(3)
    x, y = _pool(64, seed=4)
    eng = BatchedEngine(64)
    seeds = noise.round_seeds(3, 1, 7)
    eng(model, params, x[:48], y[:48], seeds, 1e-3)  # fills 48 rows
    got = eng(model, params, x[16:], y[16:], seeds, 1e-3)  # 32 cached rows, 16 new ones, in another order
    ref = loss_differences(model, params, x[16:], y[16:], seeds, 1e-3, "forward")
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)
    assert eng.features.hits == 32 and eng.features.misses == 48 + 16


def test_rows_are_keyed_by_content_so_augmented_or_changed_samples_are_recomputed():
    """The same batch position with other pixels (an augmentation's new crop) is a miss, never a stale row."""
    model, params = _rf()
    x, y = _pool(32)
    eng, plain = BatchedEngine(64), BatchedEngine(64, feature_cache_mb=0)
    seeds = noise.round_seeds(0, 1, 5)
    eng(model, params, x, y, seeds, 1e-3)
    shifted = torch.roll(x, shifts=1, dims=3)
    got = eng(model, params, shifted, y, seeds, 1e-3)
    np.testing.assert_allclose(got, plain(model, params, shifted, y, seeds, 1e-3), rtol=0, atol=ATOL)
    assert eng.features.hits == 0 and eng.features.misses == 64


def test_changed_frozen_weights_empty_the_cache():
    """A plan with other frozen weights (another random convolution) must not be answered from old features."""
    model, params = _rf()
    x, y = _pool(24)
    eng = BatchedEngine(64)
    seeds = noise.round_seeds(0, 1, 5)
    first = eng(model, params, x, y, seeds, 1e-3)
    with torch.no_grad():
        model.features[0].weight.mul_(-1.5)
    got = eng(model, params, x, y, seeds, 1e-3)
    np.testing.assert_allclose(got, BatchedEngine(64, feature_cache_mb=0)(model, params, x, y, seeds, 1e-3), rtol=0, atol=ATOL)
    assert np.abs(got - first).max() > 50 * ATOL  # the new weights change the answer: the check means something
    assert eng.features.hits == 0 and len(eng.features) == 24


def test_the_bound_caps_the_stored_rows_and_answers_stay_right():
    """Past ``feature_cache_mb`` new rows are computed and not stored; the stored ones still serve."""
    model, params = _rf()
    x, y = _pool(40)
    eng = BatchedEngine(64)
    row_bytes = 32 * 7 * 7 * 4  # rf_cnn's frozen output per sample (the classifier's input)
    eng.features.max_bytes = 10 * row_bytes
    seeds = noise.round_seeds(0, 1, 5)
    eng(model, params, x[:20], y[:20], seeds, 1e-3)
    assert len(eng.features) == 10
    got = eng(model, params, x, y, seeds, 1e-3)
    np.testing.assert_allclose(got, loss_differences(model, params, x, y, seeds, 1e-3, "forward"), rtol=0, atol=ATOL)
    assert eng.features.hits == 10 and len(eng.features) == 10


def test_no_cache_without_a_frozen_bottom_or_with_batch_statistics():
    """A full-model run has no frozen bottom; BatchNorm with batch statistics mixes samples: neither caches."""
    model = build_model("rf_cnn", image_size=28)
    x, y = _pool(16)
    eng = BatchedEngine(64)
    eng(model, estimator.select_parameters(model, []), x, y, noise.round_seeds(0, 1, 3), 1e-3)
    assert len(eng.features) == 0 and eng.features.misses == 0
    torch.manual_seed(0)
    lenet = build_model("lenet_small", image_size=14, norm="batch").train()
    xs = torch.randn(16, 1, 14, 14)
    eng(lenet, estimator.select_parameters(lenet, ["classifier.*"]), xs, y, noise.round_seeds(0, 1, 3), 1e-3)
    assert len(eng.features) == 0


def _config(*overrides: str) -> Config:
    cfg = Config()
    cfg.apply_overrides(list(overrides))
    return cfg.validate()


def test_feature_cache_mb_is_validated_and_reaches_the_engine():
    assert engine_for(_config("estimator.feature_cache_mb=7").estimator).features.max_bytes == 7 * 2**20
    assert engine_for(Config().estimator).features.max_bytes == 1024 * 2**20
    for bad in ("-1", "1.5", "true"):
        with pytest.raises(ConfigError, match="estimator.feature_cache_mb must be an integer"):
            _config(f"estimator.feature_cache_mb={bad}")
    with pytest.raises(ValueError, match="feature_cache_mb must be an integer >= 0"):
        BatchedEngine(64, feature_cache_mb=-3)



@pytest.mark.parametrize("augment", ["auto", "none"])
def test_no_feature_cache_when_the_clients_augment(tmp_path, augment):
    """CIFAR's default augmentation (a new crop and flip every round) makes every row new: the simulator's engine
    then keeps no cache, which would only fill memory; without augmentation it does."""
    from baffle.data.fixtures import write_cifar_fixture
    from baffle.sim.factory import build

    root = write_cifar_fixture(tmp_path / "cifar", kind="cifar10", n_train=20, n_test=10)
    cfg = _config("data.name=cifar10", f"data.root={root}", "model.name=rf_cnn", "model.trainable=['classifier.*']",
                  "data.num_clients=2", f"data.augment={augment}", "estimator.feature_cache_mb=8")
    engine = build(cfg).clients[0].engine
    assert engine.features.max_bytes == (0 if augment == "auto" else 8 * 2**20)


def test_new_rows_go_through_the_bottom_in_chunks_and_equal_one_whole_call(monkeypatch):
    """Filling puts at most FILL_ROWS new images through the frozen bottom per call (its pre-pool activations are what
    peaks a client's memory, far larger than the rows kept), and the stored rows are the whole call's."""
    from baffle.engine.batched.feature_cache import FILL_ROWS, FeatureCache

    model, params = _rf()
    prog = Program(model)
    shared = prog.shared_for([p for _, p in params])
    x, _ = _pool(2 * FILL_ROWS + 13)
    calls: list[int] = []
    real = Program.prefix
    monkeypatch.setattr(Program, "prefix", lambda self, xs, sh: calls.append(xs.shape[0]) or real(self, xs, sh))
    cache = FeatureCache(1 << 26)
    with torch.inference_mode():
        got = cache.prefix(prog, x, shared)
        assert calls == [FILL_ROWS, FILL_ROWS, 13]
        again = cache.prefix(prog, x, shared)  # every row stored: the bottom does not run
        assert len(calls) == 3
        ref = real(prog, x, shared)
    for n, v in ref.items():
        torch.testing.assert_close(got[n].t, v.t, rtol=0, atol=1e-6)
        assert torch.equal(again[n].t, got[n].t)
