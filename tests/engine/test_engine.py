"""The Engine interface, its factory, and the Perturber that writes directions tensor by tensor."""

import numpy as np
import pytest
import torch

from baffle import estimator
from baffle.engine import BatchedEngine, Engine, LoopEngine, MaskedEngine, Perturber, make_engine
from baffle.engine import base
from baffle.engine.base import direction_writer
from baffle.protocol import noise


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


@pytest.mark.parametrize("kind", noise.KINDS)
def test_direction_written_piece_by_piece_is_the_flat_direction(kind):
    seed = noise.round_seeds(1, 2, 1)[0]
    flat = noise.direction(seed, 1001, kind)
    fill, out = direction_writer(seed, kind), torch.empty(1001)
    for a, b in [(0, 1), (1, 40), (40, 41), (41, 1001)]:
        fill(out[a:b])
    assert out.numpy().view(np.uint32).tolist() == flat.view(np.uint32).tolist()


@pytest.mark.parametrize("chunk", [None, 8], ids=["whole-tensors", "in-pieces"])
@pytest.mark.parametrize("kind", ["v1", "v2-gauss"])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_perturber_writes_w_plus_scaled_direction_bit_for_bit(retain, masked, kind, chunk, monkeypatch):
    if chunk is not None:  # tensors above the chunk are written in pieces through a chunk-sized buffer
        monkeypatch.setattr(base, "PERTURB_CHUNK", chunk)
    model = _model()
    params = estimator.select_parameters(model)
    n = estimator.num_elements(params)
    w0 = torch.cat([p.detach().reshape(-1) for _, p in params]).clone()
    mask = torch.from_numpy((np.arange(n) % 3 != 0).astype(np.float32)) if masked else None
    seed = noise.round_seeds(0, 0, 1)[0]
    eps = torch.from_numpy(noise.direction(seed, n, kind))
    if mask is not None:
        eps = eps * mask
    pert = Perturber(params, mask=mask, retain=retain, noise=kind)
    if chunk is not None and not retain:
        assert pert._buf.numel() == chunk
    with torch.inference_mode():
        pert.set(seed, 0.37)
        got = torch.cat([p.detach().reshape(-1) for _, p in params])
        assert torch.equal(got, torch.add(w0, eps, alpha=0.37))  # the flat-direction formula, exactly
        if retain:
            pert.rescale(-0.37)
            got = torch.cat([p.detach().reshape(-1) for _, p in params])
            assert torch.equal(got, torch.add(w0, eps, alpha=-0.37))
        else:
            with pytest.raises(RuntimeError, match="retain"):
                pert.rescale(-0.37)
        pert.restore()
    assert torch.equal(torch.cat([p.detach().reshape(-1) for _, p in params]), w0)


@pytest.mark.parametrize("kind", ["v1", "v2-gauss"])
def test_a_large_non_contiguous_tensor_is_written_whole(kind, monkeypatch):
    """Only contiguous tensors can be written in pieces; a larger non-contiguous one (a transposed, tied weight)
    gets a buffer of its own size, and the values are still the flat-direction formula."""
    monkeypatch.setattr(base, "PERTURB_CHUNK", 8)
    model = _model()
    model[0].weight.data = model[0].weight.data.t().contiguous().t()  # 5x7, not contiguous, 35 > 8 elements
    params = estimator.select_parameters(model)
    assert not params[0][1].is_contiguous()
    n = estimator.num_elements(params)
    w0 = torch.cat([p.detach().reshape(-1) for _, p in params]).clone()
    seed = noise.round_seeds(0, 0, 1)[0]
    pert = Perturber(params, noise=kind)
    assert pert._buf.numel() == 35
    with torch.inference_mode():
        pert.set(seed, 0.37)
        got = torch.cat([p.detach().reshape(-1) for _, p in params])
        assert torch.equal(got, torch.add(w0, torch.from_numpy(noise.direction(seed, n, kind)), alpha=0.37))
        pert.restore()


def test_make_engine_names_and_mask():
    assert isinstance(make_engine("loop"), LoopEngine)
    eng = make_engine("batched", 64)
    assert isinstance(eng, BatchedEngine) and eng.budget.max_memory_mb == 64
    assert isinstance(make_engine("batched", 64, mask=np.ones(3, bool)), MaskedEngine)
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("gpu")
    assert all(isinstance(e, Engine) for e in (make_engine("loop"), eng))


def test_engines_agree_and_only_batched_fuses():
    model = _model()
    params = estimator.select_parameters(model)
    n = estimator.num_elements(params)
    torch.manual_seed(1)
    x, y = torch.randn(9, 7), torch.randint(0, 3, (9,))
    seeds = noise.round_seeds(5, 0, 6)
    loop = LoopEngine()(model, params, x, y, seeds, 1e-2)
    masked = MaskedEngine(np.ones(n, bool))(model, params, x, y, seeds, 1e-2)
    assert loop.tobytes() == masked.tobytes()  # an all-ones mask changes nothing, bit for bit
    np.testing.assert_allclose(BatchedEngine(64)(model, params, x, y, seeds, 1e-2), loop, rtol=0, atol=2e-6)
    assert not LoopEngine().can_fuse_clients(model) and BatchedEngine(64).can_fuse_clients(model)
    two = LoopEngine().multi_client(model, params, [(x, y), (x[:4], y[:4])], seeds, 1e-2)
    assert two[0].tobytes() == loop.tobytes()


@pytest.mark.parametrize("kind", ["v2-gauss", "v2-rademacher"])
def test_v2_kinds_reach_every_engine_and_batched_matches_loop(kind):
    model = _model()
    params = estimator.select_parameters(model)
    torch.manual_seed(2)
    x, y = torch.randn(9, 7), torch.randint(0, 3, (9,))
    seeds = noise.round_seeds(5, 1, 5)
    loop = LoopEngine()(model, params, x, y, seeds, 1e-2, noise=kind)
    v1 = LoopEngine()(model, params, x, y, seeds, 1e-2)
    assert loop.tobytes() != v1.tobytes()  # the kind is really used
    got = BatchedEngine(64)(model, params, x, y, seeds, 1e-2, "forward", noise=kind)
    np.testing.assert_allclose(got, loop, rtol=0, atol=2e-6)


def test_unknown_noise_spec_is_refused():
    model = _model()
    params = estimator.select_parameters(model)
    with pytest.raises(ValueError, match="noise kind"):
        LoopEngine()(model, params, torch.randn(2, 7), torch.tensor([0, 1]), noise.round_seeds(0, 0, 2), 1e-2, noise="v9")


def test_thread_rule_gives_small_work_one_thread_and_caps_at_free_cores():
    from baffle.config import Config
    from baffle.engine.threads import MIN_FLOPS_PER_THREAD, free_cores, intra_op_threads, threads_for_work
    from baffle.models import build_model

    assert threads_for_work(0.5 * MIN_FLOPS_PER_THREAD, 16) == 1
    assert threads_for_work(4.2 * MIN_FLOPS_PER_THREAD, 16) == 4
    assert threads_for_work(1e15, 2) == 2
    assert free_cores(cores=8, load=3.4) == 5 and free_cores(cores=2, load=9.0) == 1
    cfg = Config()  # the default job: too little work per layer for a second thread on any machine
    model = build_model(cfg.model.name, image_size=cfg.data.image_size)
    engine = make_engine(cfg.estimator.engine, cfg.estimator.max_memory_mb)
    assert intra_op_threads(cfg, model, engine, (1, cfg.data.image_size, cfg.data.image_size), 10, cores=64) == 1
    cfg.apply_overrides(["run.threads=3"])  # an explicit count always wins
    assert intra_op_threads(cfg, model, engine, (1, 14, 14), 10, cores=1) == 3


def test_thread_rule_counts_a_frozen_bottom_once_not_per_member():
    """rf_cnn with its classifier trained: the frozen convolution runs once per call, so the work per layer call
    is the classifier's per member plus the convolution's once, not both per member."""
    from baffle.engine.threads import flops_per_layer
    from baffle.models import build_model, layer_flops

    model = build_model("rf_cnn", image_size=28)
    engine = make_engine("batched", 512)
    head = estimator.select_parameters(model, ["classifier.*"])
    assert engine.frozen_bottom(model, head) == {"features.0", "features.1", "features.2", "features.3", "features.4"}
    assert engine.frozen_bottom(model, estimator.select_parameters(model)) == frozenset()
    flops = layer_flops(model, (1, 28, 28))
    assert flops == {"features.0": 2 * 25 * 32 * 28 * 28, "classifier": 2 * 32 * 7 * 7 * 10}
    once = engine.frozen_bottom(model, head)
    assert flops_per_layer(model, (1, 28, 28), 1280, 51, once) == 1280 * (flops["features.0"] + 51 * flops["classifier"]) / 2
    assert flops_per_layer(model, (1, 28, 28), 1280, 51) == 1280 * 51 * sum(flops.values()) / 2
    # with the feature cache the steady round reads the convolution's rows: only the classifier's work is counted
    assert flops_per_layer(model, (1, 28, 28), 1280, 51, skipped=once) == 1280 * 51 * flops["classifier"]


def test_thread_rule_leaves_out_a_bottom_the_feature_cache_holds():
    """``run.threads = 0`` sizes the threads by the steady round's work: with the feature cache on, rf_cnn's frozen
    convolution is not run after a client's first pass, so it does not count (it used to: 2x the classifier's work)."""
    from baffle.config import Config
    from baffle.engine.threads import MIN_FLOPS_PER_THREAD, flops_per_layer, intra_op_threads, threads_for_work
    from baffle.models import build_model

    cfg = Config()
    cfg.apply_overrides(["model.name=rf_cnn", "data.image_size=28", 'model.trainable=["classifier.*"]', "estimator.K=1000",
                         "federation.batch_size=128", "data.name=fashion_mnist"])
    cfg.validate()
    model = build_model("rf_cnn", image_size=28)
    shape = (1, 28, 28)
    cached, uncached = make_engine("batched", 512, feature_cache_mb=64), make_engine("batched", 512, feature_cache_mb=0)
    head = estimator.select_parameters(model, ["classifier.*"])
    once = cached.frozen_bottom(model, head)
    for engine, counted in ((cached, {"skipped": once}), (uncached, {"once": once})):
        members, samples = engine.call_size(model, head, 128 * 10, shape, 1000, "forward")
        want = threads_for_work(flops_per_layer(model, shape, samples, members, **counted), 64)
        assert intra_op_threads(cfg, model, engine, shape, 10, cores=64) == want


def test_chunk_workers_only_under_the_automatic_policy_and_never_beyond_the_chunks():
    from baffle.config import Config
    from baffle.engine.threads import chunk_workers
    from baffle.models import build_model

    from baffle.engine.batched import norm_act_pool as nap

    cfg = Config()  # the default job: 10 clients x 32 samples, 21 members
    model = build_model(cfg.model.name, image_size=cfg.data.image_size)
    engine = make_engine(cfg.estimator.engine, cfg.estimator.max_memory_mb)
    shape = (1, cfg.data.image_size, cfg.data.image_size)
    # the cache bound gives 2 balanced chunks (11 + 10) where the fused kernels keep the norm/activation passes'
    # tensors unmaterialised, 6 (4 members at most) where the torch ops run them
    chunks = 2 if nap.available() else 6
    assert engine.chunks(model, estimator.select_parameters(model), 320, shape, cfg.estimator.K, cfg.estimator.scheme) == chunks
    assert chunk_workers(cfg, model, engine, shape, 10, threads=1, cores=64) == chunks  # one per chunk at most
    assert chunk_workers(cfg, model, engine, shape, 10, threads=1, cores=2) == 2  # never more than the cores
    assert chunk_workers(cfg, model, engine, shape, 10, threads=1, cores=1) == 1
    assert chunk_workers(cfg, model, engine, shape, 10, threads=2, cores=64) == 1  # intra-op threads in use
    assert chunk_workers(cfg, model, engine, shape, 10, threads=1, backprop=True, cores=64) == 1
    assert chunk_workers(cfg, model, LoopEngine(), shape, 10, threads=1, cores=64) == 1
    cfg.apply_overrides(["run.threads=1"])  # an explicit count is a promise about cores: one worker
    assert chunk_workers(cfg, model, engine, shape, 10, threads=1, cores=64) == 1


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_chunk_workers_change_no_loss_difference(scheme):
    """Chunks on several threads give exactly the one-thread losses (the worker count follows the load)."""
    from baffle.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet_small", image_size=14)
    params = estimator.select_parameters(model)
    batches = [(torch.randn(8, 1, 14, 14), torch.randint(0, 10, (8,))) for _ in range(5)]
    seeds = noise.round_seeds(3, 1, 20)
    results = []
    for workers in (1, 2, 3):
        engine = BatchedEngine(max_chunk=8)
        engine.workers = workers
        results.append(np.stack(engine.multi_client(model, params, batches, seeds, 1e-3, scheme)))
        assert engine.chunks(model, params, 40, (1, 14, 14), 20, scheme) >= 3
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_fusion_key_is_public_and_only_plain_clients_share_one():
    from baffle.baselines import BPClient
    from baffle.client import Client
    from baffle.data.dataset import Dataset
    from baffle.engine.fused import fused_uploads
    from baffle.protocol.messages import RoundPlan

    model = torch.nn.Sequential(torch.nn.Flatten(), _model())
    data = Dataset(torch.randn(40, 1, 1, 7), torch.randint(0, 3, (40,)), 3, "t")
    eng = BatchedEngine(64)
    a, b = (Client(i, data, np.arange(20 * i, 20 * i + 20), model, batch_size=4, seed=i, engine=eng) for i in (0, 1))
    assert a.fusion_key() == b.fusion_key() is not None
    assert BPClient(2, data, np.arange(20), model, batch_size=4, seed=2, engine=eng).fusion_key() is None
    plan = RoundPlan(0, noise.round_seeds(0, 0, 3), 1e-2, "forward", 4)
    fused = fused_uploads([a, b], plan)
    assert [u.client_id for u in fused] == [0, 1] and all(u.num_samples == 4 for u in fused)
    loop_clients = [Client(i, data, np.arange(20), model, batch_size=4, seed=i) for i in (0, 1)]
    assert fused_uploads(loop_clients, plan) is None  # the loop engine gains nothing from fusing
