"""The batched engine returns the reference loop's loss differences, whatever the chunking or model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from baffle import estimator
from baffle.protocol import noise
from baffle.engine import BatchedEngine
from baffle.engine.batched.engine import chunk_spans
from baffle.engine.loop import loss_differences
from baffle.models import build_model

# Loss differences are differences of two float32 losses (~2.3, ulp 2.4e-7) computed along different
# summation orders; a few ulps is float32 rounding. Typical |dL| here is 1e-4..1e-2.
ATOL = 2e-6


def _batch(shape, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, *shape, generator=g), torch.randint(0, 10, (b,), generator=g)


def _check(model, x, y, trainable, scheme, K=7, sigma=1e-3, engine=None, loss_fn=F.cross_entropy):
    engine = engine or BatchedEngine(64)
    params = estimator.select_parameters(model, trainable)
    seeds = noise.round_seeds(3, 1, K)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = loss_differences(model, params, x, y, seeds, sigma, scheme, loss_fn)
    got = engine(model, params, x, y, seeds, sigma, scheme, loss_fn)
    assert got.dtype == np.float32 and got.shape == (K,)
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)
    assert np.abs(ref).max() > 50 * ATOL  # the differences are not all zero: the comparison means something
    for k, v in model.state_dict().items():  # the engine never touches the model
        assert torch.equal(v, before[k]), k
    return engine


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_lenet_matches_loop(norm, scheme):
    torch.manual_seed(0)
    model = build_model("lenet", norm=norm)
    x, y = _batch((1, 28, 28), 16)
    eng = _check(model, x, y, None, scheme)
    assert eng.supports(model)


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_lenet_small_matches_loop(scheme):
    # the default model: two max-pools then a flatten of per-member feature maps into a batched matmul
    torch.manual_seed(4)
    model = build_model("lenet_small", image_size=14)
    x, y = _batch((1, 14, 14), 16, seed=4)
    eng = _check(model, x, y, None, scheme)
    assert eng.supports(model) and eng.can_fuse_clients(model)


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
def test_mlp_matches_loop_including_trainable_subset(norm):
    torch.manual_seed(1)
    model = build_model("mlp", norm=norm)
    x, y = _batch((1, 28, 28), 16, seed=1)
    _check(model, x, y, None, "forward")
    _check(model, x, y, ["features.1.*", "classifier.bias"], "central")


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_wrn_tiny_batch_matches_loop(norm):
    torch.manual_seed(2)
    model = build_model("wrn10_2", in_channels=3, image_size=16, norm=norm)
    x, y = _batch((3, 16, 16), 4, seed=2)
    _check(model, x, y, None, "forward", K=4)
    _check(model, x, y, ["blocks.1.*", "classifier.*"], "central", K=3)


def test_lenet_only_classifier_or_only_first_conv():
    torch.manual_seed(3)
    model = build_model("lenet")
    x, y = _batch((1, 28, 28), 12, seed=3)
    _check(model, x, y, ["classifier.*"], "forward")
    _check(model, x, y, ["features.0.bias"], "forward")  # only a bias of a shared-input layer differs
    _check(model, x, y, ["features.4.weight"], "central")


def test_chunking_by_memory_budget_gives_the_same_answer():
    torch.manual_seed(4)
    model = build_model("lenet")
    x, y = _batch((1, 28, 28), 16, seed=4)
    params = estimator.select_parameters(model)
    seeds = noise.round_seeds(5, 0, 13)
    results, chunks = [], []
    for mb in (1, 40, 512):
        eng = BatchedEngine(mb, cache_bytes=2**40)
        results.append(eng(model, params, x, y, seeds, 1e-3, "forward"))
        chunks.append(eng.last_chunk)
    assert chunks[0] < chunks[1] < chunks[2], chunks  # the budget really sets the chunk size
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=0, atol=ATOL)


@given(total=st.integers(1, 200), most=st.integers(1, 64), central=st.booleans())
@hyp_settings(max_examples=300, deadline=None)
def test_chunk_spans_cover_every_member_once_in_near_equal_chunks(total, most, central):
    total *= 2 if central else 1
    spans = chunk_spans(total, most, 2 if central else 1)
    unit = 2 if central and most >= 2 else 1  # a pair stays together unless one member per chunk is all memory allows
    assert [a for a, _ in spans] == [0] + [b for _, b in spans[:-1]] and spans[-1][1] == total  # contiguous cover
    sizes = [b - a for a, b in spans]
    assert max(sizes) - min(sizes) <= unit and all(s % unit == 0 for s in sizes)  # no lone remainder chunk
    step = most - most % unit
    assert max(sizes) <= step  # never over the planner's chunk
    assert len(spans) == -(-total // step)  # and no more chunks than that needs


def test_central_chunks_keep_pairs_together():
    torch.manual_seed(5)
    model = build_model("lenet", norm="none")
    x, y = _batch((1, 28, 28), 8, seed=5)
    _check(model, x, y, None, "central", K=9, engine=BatchedEngine(64, max_chunk=5))


def test_custom_loss_function():
    torch.manual_seed(6)
    model = build_model("mlp", norm="none")
    x, y = _batch((1, 28, 28), 8, seed=6)

    def smooth_ce(logits, target):
        return F.cross_entropy(logits, target, label_smoothing=0.1)

    _check(model, x, y, None, "forward", loss_fn=smooth_ce)


class _Odd(torch.nn.Module):
    """A model with an op the engine does not batch (a softmax over channels): it must still work."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(10, 16)
        self.fc2 = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.softmax(self.fc1(x), dim=1) * 4.0)


def test_unknown_model_falls_back_to_the_loop():
    torch.manual_seed(7)
    model = _Odd()
    x, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    eng = _check(model, x, y, None, "forward")
    assert not eng.supports(model)


def test_multi_client_pass_equals_client_by_client():
    torch.manual_seed(8)
    model = build_model("lenet")
    eng = BatchedEngine(64)
    params = estimator.select_parameters(model)
    seeds = noise.round_seeds(1, 2, 6)
    batches = [_batch((1, 28, 28), b, seed=10 + b) for b in (8, 5, 8)]
    fused = eng.multi_client(model, params, batches, seeds, 1e-3, "forward")
    for (x, y), got in zip(batches, fused):
        ref = loss_differences(model, params, x, y, seeds, 1e-3, "forward")
        np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)
    assert eng.can_fuse_clients(model)
    assert not eng.can_fuse_clients(build_model("lenet", norm="batch"))  # batch statistics would mix clients


def test_bad_budget_is_rejected():
    with pytest.raises(ValueError, match="max_memory_mb"):
        BatchedEngine(0)


def _federation(fuse: bool, norm: str = "group"):
    from baffle.config import Config
    from baffle.sim.rounds import RoundRunner
    from baffle.sim.factory import build

    cfg = Config()
    cfg.apply_overrides(
        [
            "data.name=synthetic",
            "data.num_clients=3",
            "data.train_subset=300",
            "data.test_subset=50",
            "data.eval_train_samples=50",
            "model.name=lenet",
            f"model.norm={norm}",
            "estimator.K=8",
            "estimator.sigma=1e-2",
            "estimator.engine=batched",
            f"estimator.fuse_clients={str(fuse).lower()}",
            "federation.batch_size=8",
            "optim.lr=0.01",
        ]
    )
    fed = build(cfg.validate())
    return fed, RoundRunner(fed)


def test_fused_clients_give_the_client_by_client_uploads_and_weights():
    from baffle.client import load_weights

    runs = {}
    for fuse in (True, False):
        fed, runner = _federation(fuse)
        load_weights(fed.clients[0].model, fed.strategy.global_weights())
        first = runner.client_uploads([0, 1, 2], 0)
        for r in range(3):
            runner.run_round(r)
        runs[fuse] = (first, fed.strategy.global_weights(), [c.sampler.state_dict() for c in fed.clients])
    (fu, fw, fs), (pu, pw, ps) = runs[True], runs[False]
    assert [u.client_id for u in fu] == [u.client_id for u in pu]
    for a, b in zip(fu, pu):
        assert a.num_samples == b.num_samples and a.round == b.round
        np.testing.assert_allclose(a.loss_diffs, b.loss_diffs, rtol=0, atol=ATOL)
    assert fs == ps  # the clients drew the same minibatches
    for k in pw:
        torch.testing.assert_close(fw[k], pw[k], rtol=1e-4, atol=1e-5)


def test_fused_path_declines_batch_statistics_and_foreign_clients():
    from baffle.engine.fused import fused_uploads

    fed, runner = _federation(True, norm="batch")
    plan = fed.strategy.plan(0, send_weights=False)
    assert fused_uploads(fed.clients, plan) is None  # BatchNorm would mix the clients' batches

    class Flaky(type(fed.clients[0])):  # a client with behaviour of its own keeps the per-client path
        pass

    fed, runner = _federation(True)
    fed.clients[1].__class__ = Flaky
    plan = fed.strategy.plan(0, send_weights=False)
    assert fused_uploads(fed.clients, plan) is None
    fed.clients[1].__class__ = Flaky.__mro__[1]
    assert fused_uploads(fed.clients, plan) is not None


def test_batch_split_into_slices_gives_the_same_answer():
    torch.manual_seed(9)
    model = build_model("lenet")
    x, y = _batch((1, 28, 28), 12, seed=9)
    eng = BatchedEngine(512, cache_bytes=300_000)  # one member at the full batch does not fit: slices
    _check(model, x, y, None, "forward", K=3, engine=eng)
    assert eng.last_chunk == 1 and 1 <= eng.last_sub_batch < 12


def test_batchnorm_with_running_statistics():
    torch.manual_seed(10)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)
    )
    x, y = _batch((1, 8, 8), 6, seed=10)
    model.train()  # every loop forward updates the running statistics: the engine must use the loop
    eng = BatchedEngine(64)
    assert not eng.supports(model)
    model.eval()  # fixed statistics: batchable, and the clients' batches may be fused
    eng = _check(model, x, y, None, "forward")
    assert eng.supports(model) and eng.can_fuse_clients(model)


class _Branching(torch.nn.Module):
    """An activation whose input is also read by the next node (a residual sum): it must not run in place,
    or the sum would add the activated values."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = torch.nn.Hardswish()
        self.act2 = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        h = self.conv(x)
        h = self.act1(h) + h
        return self.fc(self.act2(torch.flatten(h, 1)))


def test_in_place_activations_never_overwrite_a_value_another_node_reads():
    torch.manual_seed(5)
    model = _Branching()
    x, y = _batch((1, 8, 8), 12, seed=5)
    eng = _check(model, x, y, None, "forward")
    assert eng.supports(model)  # the batched program ran, not the loop fallback


def _count_unfolds(monkeypatch) -> dict[str, int]:
    """Counts the im2col builds (F.unfold calls) from here on: {"n": count}."""
    calls = {"n": 0}
    real = F.unfold

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(F, "unfold", counting)
    return calls


def test_chunks_of_one_call_share_the_input_im2col(monkeypatch):
    """The first layer's im2col depends on the input alone: built once per engine call, not once per chunk,
    with the same loss differences as the loop."""
    torch.manual_seed(6)
    model = build_model("lenet_small", image_size=14)
    x, y = _batch((1, 14, 14), 16, seed=6)
    calls = _count_unfolds(monkeypatch)
    eng = _check(model, x, y, None, "forward", K=11, engine=BatchedEngine(64, max_chunk=4))
    assert eng.last_chunk == 4 and eng.last_sub_batch == 16  # 12 members in 3 chunks, the batch unsplit
    assert calls["n"] == 1


def test_slices_of_a_split_batch_build_their_im2col_once_per_call_within_the_budget_share(monkeypatch):
    """With the batch in slices (one member per chunk), each slice's input im2col is kept for the members after the
    first, up to SLICED_COLS_SHARE of the memory budget: past it, the slices that do not fit are recomputed. The loss
    differences are the loop's either way."""
    from baffle.engine.batched import planner

    torch.manual_seed(6)
    model = build_model("lenet", norm="none")  # the paper's LeNet: no norm, so its first conv is not fused
    x, y = _batch((1, 28, 28), 12, seed=6)
    calls = _count_unfolds(monkeypatch)
    eng = _check(model, x, y, None, "forward", K=5, engine=BatchedEngine(512, cache_bytes=300_000))
    slices = -(-12 // eng.last_sub_batch)
    assert eng.last_chunk == 1 and slices >= 2 and calls["n"] == slices  # 6 members x the slices, built once each
    one = 25 * 28 * 28 * 4 * eng.last_sub_batch  # one slice's im2col (bytes), about 0.4 MB here
    monkeypatch.setattr(planner, "SLICED_COLS_SHARE", one / (512 * 2**20))
    calls["n"] = 0
    _check(model, x, y, None, "forward", K=5, engine=BatchedEngine(512, cache_bytes=300_000))
    assert calls["n"] == 1 + 6 * (slices - 1)  # room for one slice's: the others are built by every member


@pytest.mark.parametrize("kind", ["v1", "v2-gauss", "v2-rademacher"])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_whole_direction_block_equals_tensor_by_tensor(monkeypatch, kind, scheme):
    """Small models get each direction in one generator call (engine.batched.DIRECTION_BLOCK_BYTES); large ones
    tensor by tensor. Both read the same stream, so the loss differences must be bit-identical."""
    from baffle.engine.batched import engine as batched_engine

    torch.manual_seed(7)
    model = build_model("lenet_small", image_size=14)
    x, y = _batch((1, 14, 14), 16, seed=7)
    params = estimator.select_parameters(model, None)
    seeds = noise.round_seeds(5, 2, 9)
    block = BatchedEngine(64, max_chunk=4)(model, params, x, y, seeds, 1e-3, scheme, noise=kind)
    monkeypatch.setattr(batched_engine, "DIRECTION_BLOCK_BYTES", 0)
    piecewise = BatchedEngine(64, max_chunk=4)(model, params, x, y, seeds, 1e-3, scheme, noise=kind)
    assert np.abs(block).max() > 0
    np.testing.assert_array_equal(block, piecewise)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_both_grouped_conv_layouts_match_the_loop(monkeypatch, layout):
    """The per-member convolutions run channels-last on AVX-512 cores and NCHW elsewhere
    (kernels.grouped_channels_last); both layouts, and every layer after them (norms, pooling views, a
    residual add of a channels-last and an NCHW value, the flatten before the classifier), give the loop's
    losses on any machine."""
    from baffle.engine.batched.kernels import CONV_LAYOUT_ENV

    monkeypatch.setenv(CONV_LAYOUT_ENV, layout)
    torch.manual_seed(4)
    _check(build_model("lenet_small", image_size=14), *_batch((1, 14, 14), 16, seed=4), None, "forward")
    torch.manual_seed(0)
    _check(build_model("lenet", norm="batch"), *_batch((1, 28, 28), 8), None, "central")
    torch.manual_seed(2)
    _check(build_model("wrn10_2", in_channels=3, image_size=16, norm="group"), *_batch((3, 16, 16), 4, seed=2), None, "forward", K=4)


def test_bad_conv_layout_override_is_named(monkeypatch):
    from baffle.engine.batched.kernels import CONV_LAYOUT_ENV, grouped_channels_last

    monkeypatch.setenv(CONV_LAYOUT_ENV, "nhwc")
    with pytest.raises(ValueError, match="BAFFLE_CONV_LAYOUT must be 'nchw' or 'channels_last', got 'nhwc'"):
        grouped_channels_last()


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_frozen_bottom_runs_once_per_call_not_once_per_chunk(scheme):
    """With only the top training (rf_cnn's classifier, lenet_small's second stage and classifier), the frozen
    layers' output is the same for every member: computed once per engine call, chunks start from it, and the
    loss differences stay the loop's. The plan counts only the per-member layers, so the chunks get wider."""
    torch.manual_seed(7)
    model = build_model("rf_cnn", image_size=28)
    x, y = _batch((1, 28, 28), 24, seed=7)
    conv = model.features[0]
    calls = {"n": 0}
    hook = conv.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    try:
        eng = _check(model, x, y, ["classifier.*"], scheme, K=11, engine=BatchedEngine(64, max_chunk=4, feature_cache_mb=0))
        assert eng.last_chunk == 4 and eng.last_sub_batch == 24
        calls["n"] = 0
        eng(model, estimator.select_parameters(model, ["classifier.*"]), x, y, noise.round_seeds(3, 1, 11), 1e-3, scheme)
        assert calls["n"] == 1  # 12 or 22 members in 3 or 6 chunks
    finally:
        hook.remove()
    lenet = build_model("lenet_small", image_size=14)
    x, y = _batch((1, 14, 14), 16, seed=8)
    _check(lenet, x, y, ["features.4.*", "classifier.*"], scheme, K=9, engine=BatchedEngine(64, max_chunk=4))


def test_frozen_bottom_is_sized_out_of_the_chunk_plan():
    """A frozen bottom is not counted per member: rf_cnn's 32-channel full-resolution map made the planner run one
    member per chunk on small slices of the batch; with the classifier alone perturbed, every member fits one chunk
    over the whole batch (up to the cache bound). Training every parameter plans as before."""
    from baffle.engine.batched.planner import Budget, activation_floats
    from baffle.engine.batched.program import Program

    model = build_model("rf_cnn", image_size=28)
    prog = Program(model)
    head = frozenset(id(p) for p in model.classifier.parameters())
    shared = prog.shared_nodes(head)
    assert {n.target for n in shared if n.op == "call_module"} == {"features.0", "features.1", "features.2", "features.3", "features.4"}
    assert prog.shared_nodes(frozenset(id(p) for p in model.parameters())) == frozenset()
    assert activation_floats(prog, (1, 28, 28), shared)[1] < activation_floats(prog, (1, 28, 28))[1] / 20
    b = Budget(max_memory_mb=64)
    assert b.chunk_size(prog, 15690, 1280, (1, 28, 28), 21) == 1 and b.sub_batch(prog, 15690, 1280, (1, 28, 28), 1) < 100
    assert b.chunk_size(prog, 15690, 1280, (1, 28, 28), 21, shared) >= 2 and b.sub_batch(prog, 15690, 1280, (1, 28, 28), 1, shared) == 1280


def test_frozen_bottoms_output_for_the_whole_batch_comes_off_the_memory_budget():
    """The engine holds the frozen bottom's output for the whole batch (every slice's) while its chunks run, so
    the planner sizes the chunks from what that leaves: rf_cnn's pooled 32x7x7 map at 4,096 samples is 25.7 MB,
    which a 32 MB budget must not also spend on members."""
    from baffle.engine.batched.planner import Budget, activation_floats, frontier_floats
    from baffle.engine.batched.program import Program

    model = build_model("rf_cnn", image_size=28)
    prog = Program(model)
    shared = prog.shared_nodes(frozenset(id(p) for p in model.classifier.parameters()))
    assert frontier_floats(prog, (1, 28, 28), shared) == 32 * 7 * 7
    assert frontier_floats(prog, (1, 28, 28), frozenset()) == 0
    n, batch, shape = 15690, 4096, (1, 28, 28)
    _, act = activation_floats(prog, shape, shared)
    per_member = 4 * (3 * n + 2 * act * batch)
    b = Budget(max_memory_mb=32, max_chunk=64, cache_bytes=2**40)
    held = 4 * 32 * 7 * 7 * batch
    assert b.chunk_size(prog, n, batch, shape, 101, shared) == max(1, (32 * 2**20 - held) // per_member)
    assert b.chunk_size(prog, n, batch, shape, 101, shared) < 32 * 2**20 // per_member
    # a budget the bottom's output nearly fills: one member's call gets slices of what is left once the weights and
    # the slices' im2col share (SLICED_COLS_SHARE) are taken too
    tight = Budget(max_memory_mb=30, max_chunk=64, cache_bytes=2**40)
    most = (30 * 2**20 - held - 12 * 150_000 - 30 * 2**20 // 8) // (8 * act)
    assert 0 < most < batch and tight.sub_batch(prog, 150_000, batch, shape, 1, shared) == -(-batch // -(-batch // most))
    assert Budget(max_memory_mb=50, cache_bytes=2**40).sub_batch(prog, 150_000, batch, shape, 1, shared) == batch
