"""Inference-only clients: ONNX Runtime without torch, int8 and pruned variants, mixed federations."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from baffle import estimator, onnx_client, pruning
from baffle.protocol import noise
from baffle.config import Config, ConfigError
from baffle.engine import MaskedEngine
from baffle.engine.loop import loss_differences
from baffle.export import export_onnx, numpy_weights
from baffle.onnx_session import make_session
from baffle.protocol.layout import select_names
from baffle.protocol.sampler import BatchSampler
from baffle.protocol.messages import Upload
from baffle.models import build_model
from baffle.sim.loop import Simulation
from baffle.reconstruct import reconstruct

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    model = build_model("lenet", in_channels=1, num_classes=10, image_size=14)
    return model, export_onnx(model, (1, 14, 14))


def _batch(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 14, 14, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_export_has_weights_as_named_inputs_and_layout_metadata(lenet):
    model, graph = lenet
    session = make_session(graph)
    inputs = [i.name for i in session.get_inputs()]
    assert inputs[0] == "x" and set(inputs[1:]) == set(model.state_dict())
    assert onnx_client.parameter_names(session) == [n for n, _ in model.named_parameters()]
    assert len(graph) < 20_000  # graph only: the 4n weight bytes travel separately each round


@pytest.mark.parametrize("trainable", [[], ["classifier.*", "features.0.bias"]])
def test_select_names_matches_select_parameters(lenet, trainable):
    model, graph = lenet
    names = onnx_client.parameter_names(make_session(graph))
    assert select_names(names, trainable) == [n for n, _ in estimator.select_parameters(model, trainable)]
    with pytest.raises(ValueError, match="matches no parameter"):
        select_names(names, ["classifer.*"])


@pytest.mark.parametrize("scheme,trainable", [("forward", []), ("central", []), ("forward", ["features.4.*", "classifier.weight"])])
def test_onnx_loss_differences_equal_torch_ones(lenet, scheme, trainable):
    model, graph = lenet
    x, y = _batch()
    seeds = noise.round_seeds(7, 3, 12)
    ref = loss_differences(model, estimator.select_parameters(model, trainable), x, y, seeds, 1e-3, scheme)
    session = make_session(graph)
    names = select_names(onnx_client.parameter_names(session), trainable)
    got = onnx_client.loss_differences(session, numpy_weights(model.state_dict()), names, x.numpy(), y.numpy(), seeds, 1e-3, scheme)
    assert got.dtype == np.float32 and got.shape == (12,)
    # float32 tolerance: the two runtimes' convolutions round differently at ~1e-7 of the loss
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * max(1.0, float(np.abs(ref).max()) * 100))
    assert np.corrcoef(got, ref)[0, 1] > 0.999


def test_cross_entropy_matches_torch():
    logits, y = torch.randn(50, 10) * 5, torch.randint(0, 10, (50,))
    ref = float(torch.nn.functional.cross_entropy(logits, y))
    assert abs(onnx_client.cross_entropy(logits.numpy(), y.numpy()) - ref) < 1e-5


def test_weights_that_do_not_fit_are_refused(lenet):
    model, graph = lenet
    session = make_session(graph)
    w = numpy_weights(model.state_dict())
    with pytest.raises(ValueError, match="missing"):
        onnx_client.check_weights(session, {k: v for k, v in w.items() if k != "classifier.bias"})
    w["classifier.bias"] = np.zeros(11, np.float32)
    with pytest.raises(ValueError, match="classifier.bias has shape"):
        onnx_client.check_weights(session, w)


CHILD = textwrap.dedent(
    """
    import json, runpy, sys
    sys.argv = ["baffle.onnx_client"] + sys.argv[1:]
    try:
        runpy.run_module("baffle.onnx_client", run_name="__main__")
    finally:
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or m in ("baffle.estimator", "baffle.export"))
        print(json.dumps({"forbidden": bad}))
    """
)


def test_onnx_client_process_never_imports_torch(lenet, tmp_path):
    model, graph = lenet
    x, y = _batch(40, seed=1)
    seeds = noise.round_seeds(1, 2, 8)
    (tmp_path / "model.onnx").write_bytes(graph)
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    np.savez(tmp_path / "weights.npz", **numpy_weights(model.state_dict()))
    args = ["--model", tmp_path / "model.onnx", "--weights", tmp_path / "weights.npz", "--data", tmp_path / "data.npz",
            "--client-id", 3, "--run-seed", 1, "--round", 2, "--K", 8, "--sigma", 1e-3, "--batch-size", 16, "--seed", 5,
            "--out", tmp_path / "upload.bin"]
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"forbidden": []}
    up = Upload.from_bytes((tmp_path / "upload.bin").read_bytes())
    assert (up.client_id, up.round, up.num_samples) == (3, 2, 16)
    idx = BatchSampler(np.arange(40), 16, seed=5).next_batch()  # the torch client would draw this batch
    ref = loss_differences(model, estimator.select_parameters(model), x[idx], y[idx], seeds, 1e-3,
                           noise=onnx_client.CLI_DEFAULT_NOISE)  # no --noise given: the run's default spec
    np.testing.assert_allclose(up.loss_diffs, ref, rtol=0, atol=2e-5)


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_int8_estimate_points_like_the_float_one_at_the_documented_sigma(lenet):
    from baffle.onnx_quant import quantized_session

    model, graph = lenet
    x, y = _batch(32, seed=2)
    w = numpy_weights(model.state_dict())
    session = make_session(graph)
    names = onnx_client.parameter_names(session)
    n = sum(w[k].size for k in names)
    seeds = noise.round_seeds(0, 0, 48)
    sigma = 1e-2  # docs/inference-clients.md: activation-only int8 needs sigma >= 1e-3 on LeNet
    g_float = reconstruct(onnx_client.loss_differences(session, w, names, x.numpy(), y.numpy(), seeds, sigma), seeds, sigma, n)
    q = quantized_session(graph, x.numpy(), w)
    d_int8 = onnx_client.loss_differences(q, w, names, x.numpy(), y.numpy(), seeds, sigma)
    assert _cosine(reconstruct(d_int8, seeds, sigma, n), g_float) > 0.8
    assert not np.allclose(d_int8, onnx_client.loss_differences(session, w, names, x.numpy(), y.numpy(), seeds, sigma))


class _Recorder:
    """Wraps a session and keeps every weight vector it is asked to evaluate."""

    def __init__(self, session, names):
        self.session, self.names, self.seen = session, names, []

    def run(self, outputs, feeds):
        self.seen.append(np.concatenate([feeds[k].reshape(-1) for k in self.names]))
        return self.session.run(outputs, feeds)


def test_pruned_clients_never_perturb_masked_weights(lenet):
    model, graph = lenet
    model = build_model("lenet", in_channels=1, num_classes=10, image_size=14)
    model.load_state_dict(lenet[0].state_dict())
    params = estimator.select_parameters(model)
    mask = pruning.magnitude_mask(params, 0.5)
    assert 0.4 < mask.mean() < 0.6
    pruning.apply_mask(params, mask)
    x, y = _batch(16, seed=3)
    seeds = noise.round_seeds(4, 1, 6)
    # ONNX client: every evaluated weight vector is zero wherever the mask prunes
    session = make_session(graph)
    names = onnx_client.parameter_names(session)
    rec = _Recorder(session, names)
    w = numpy_weights(model.state_dict())
    d_onnx = onnx_client.loss_differences(rec, w, names, x.numpy(), y.numpy(), seeds, 1e-2, "central", mask=mask)
    assert len(rec.seen) == 12 and all(np.all(v[~mask] == 0) for v in rec.seen)
    assert all(np.any(v[mask] != rec.seen[0][mask]) for v in rec.seen[1:])  # kept weights do move
    # torch client with the masked engine: same property, same numbers
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(torch.cat([p.reshape(-1) for _, p in params]).clone()))
    d_torch = MaskedEngine(mask)(model, params, x, y, seeds, 1e-2, "central")
    hook.remove()
    assert len(seen) == 12 and all(torch.all(v[torch.from_numpy(~mask)] == 0) for v in seen)
    np.testing.assert_allclose(d_onnx, d_torch, rtol=0, atol=2e-5)


def test_server_keeps_pruned_weights_at_zero():
    cfg = Config()
    cfg.apply_overrides(["data.name=synthetic", "model.name=lenet", "model.prune=0.5", "estimator.K=4", "optim.ema_decay=0.9"])
    from baffle.server.strategy import ServerStrategy

    torch.manual_seed(0)
    strategy = ServerStrategy(build_model("lenet", image_size=14), cfg.validate())
    strategy.set_mask(pruning.magnitude_mask(strategy.params, 0.5))
    for r in range(3):
        strategy.apply_loss_diffs(r, np.random.default_rng(r).normal(size=4).astype(np.float32))
    flat = torch.cat([p.detach().reshape(-1) for _, p in strategy.params]).numpy()
    assert np.all(flat[~strategy.mask] == 0) and np.count_nonzero(flat[strategy.mask]) > 0.99 * strategy.mask.sum()
    ema = torch.cat([strategy.ema.shadow[n].reshape(-1) for n, _ in strategy.params]).numpy()
    assert np.all(ema[~strategy.mask] == 0)


def test_config_rejects_bad_inference_client_settings():
    for overrides, match in (
        (["federation.onnx_clients=1.5"], "onnx_clients"),
        (["federation.onnx_clients=20"], "exceeds"),
        (["federation.onnx_precision=int4"], "onnx_precision"),
        (["model.prune=1.0"], "model.prune"),
        (["federation.onnx_clients=0.5", "run.method=fedavg"], "run.method"),
    ):
        cfg = Config()
        cfg.apply_overrides(["data.name=synthetic"] + overrides)
        with pytest.raises(ConfigError, match=match):
            cfg.validate()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _mixed(rounds, **extra):
    cfg = Config()
    cfg.apply_overrides(
        [
            "data.name=synthetic",
            "data.image_size=14",
            "data.num_clients=4",
            "data.eval_train_samples=100",
            "model.name=mlp",
            "estimator.K=32",
            "estimator.sigma=1e-2",
            "estimator.engine=loop",
            "federation.batch_size=16",
            "federation.onnx_clients=0.5",
            f"run.rounds={rounds}",
            f"run.eval_every={rounds}",
            "run.checkpoint_every=0",
            "run.threads=1",  # ORT clients use 1 thread too; 2 spinning OpenMP threads cost 10x CPU on a busy box
            "optim.lr=0.02",
            "optim.ema_decay=0.9",
        ]
        + [f"{k}={v}" for k, v in extra.items()]
    )
    return cfg.validate()


def test_mixed_torch_and_onnx_federation_trains():
    sim = Simulation(_mixed(40), None, progress=False)
    kinds = [type(c).__name__ for c in sim.fed.clients]
    assert kinds == ["OnnxClient", "OnnxClient", "Client", "Client"]
    summary = sim.run()
    assert summary["final_test_acc"] > 0.4, summary  # chance is 0.1
    assert summary["rejected_uploads"] == 0


@pytest.mark.parametrize("sigma, warned", [(1e-3, True), (1e-2, False)])
def test_int8_clients_below_the_sigma_rule_are_warned(caplog, sigma, warned):
    """The documented rule (int8 clients need sigma >= 1e-2) is said where a user sets it up, once, naming the key."""
    cfg = _mixed(1, **{"federation.onnx_clients": 1.0, "federation.onnx_precision": "int8", "estimator.sigma": sigma})
    with caplog.at_level("WARNING", logger="baffle.mixed"):
        Simulation(cfg, None, progress=False)
    hits = [r.getMessage() for r in caplog.records if r.name == "baffle.mixed"]
    assert len(hits) == int(warned) and all("estimator.sigma=0.01" in h for h in hits)


def test_mixed_round_equals_all_torch_round():
    """Same seeds, same batches: swapping torch clients for ONNX ones changes the update by float noise only."""
    results = []
    for frac in (0.0, 1.0):
        sim = Simulation(_mixed(2, **{"federation.onnx_clients": frac}), None, progress=False)
        sim.run()
        results.append(torch.cat([p.detach().reshape(-1) for _, p in sim.fed.strategy.params]))
    assert torch.allclose(results[0], results[1], atol=1e-4)


@pytest.mark.slow
def test_mixed_federation_trains_mnist_lenet():
    """The mixed_float run of experiments/inference_accuracy.py (measured 0.355 after 100 rounds)."""
    cfg = Config()
    cfg.apply_overrides(
        ["data.name=mnist", "data.train_subset=10000", "data.test_subset=2000", "data.eval_train_samples=500",
         "estimator.K=20", "estimator.sigma=1e-2", "federation.batch_size=16", "optim.lr=0.05", "optim.ema_decay=0.9",
         "federation.onnx_clients=0.5", "run.threads=1", "run.rounds=100", "run.eval_every=100", "run.checkpoint_every=0"]
    )
    summary = Simulation(cfg.validate(), None, progress=False).run()
    assert summary["final_test_acc"] > 0.25, summary  # chance is 0.1


def test_cli_default_noise_is_the_runs_default():
    """The one-shot CLI answers a round of a baffle run: with no --noise it must use the spec a default run uses."""
    from baffle.config import Config

    assert onnx_client.CLI_DEFAULT_NOISE == Config().estimator.noise
