"""``run.device``: the rule (cpu | cuda | auto), CPU runs unchanged by the device path, and every tensor where
it is told to be.

This machine has no GPU. Device-placement tests are parametrized over the devices torch sees, so on a CUDA
machine they check cuda too; on the CPU they run under a *trap*: torch's default device set to "meta", so any
tensor our code creates without naming its device becomes a data-less meta tensor and the computation fails
(on a GPU that tensor would silently land on the CPU). The traps wrap our code only: torch's optimizers
deliberately keep scalar state on the CPU and are not ours to check.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from baffle import estimator, noise_torch
from baffle.baselines import BPClient
from baffle.config import Config, ConfigError
from baffle.config.choices import DEVICES
from baffle.config.run import resolve_device
from baffle.data.dataset import Dataset
from baffle.engine import BatchedEngine, LoopEngine, MaskedEngine
from baffle.protocol import noise
from baffle.reconstruct import reconstruct, reconstruct_on, reconstruct_torch
from baffle.sim.evaluate import evaluate
from baffle.testing import tiny

SEEN = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour of a machine without CUDA")
TRAP = torch.device("meta")  # as a context manager: the default device of tensors created without one


def _cfg(*overrides: str) -> Config:
    cfg = Config()
    cfg.apply_overrides(list(overrides))
    return cfg


# ---- the rule -------------------------------------------------------------------------------------------
def test_device_choices_and_a_bad_name_is_one_line_naming_the_key():
    assert DEVICES == ("cpu", "cuda", "auto")
    with pytest.raises(ConfigError, match=r"run.device='gpu' is not valid") as e:
        _cfg("run.device=gpu").validate()
    assert "\n" not in str(e.value)


@no_cuda
def test_cuda_without_cuda_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"run.device='cuda' but torch sees no CUDA device") as e:
        _cfg("run.device=cuda").validate()
    assert "\n" not in str(e.value)
    assert resolve_device(_cfg("run.device=auto").validate()) == "cpu"


@pytest.mark.parametrize("available", [False, True])
def test_auto_is_cuda_when_torch_sees_one_and_numpy_clients_refuse_cuda(monkeypatch, available):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    assert resolve_device(_cfg("run.device=auto")) == ("cuda" if available else "cpu")
    assert resolve_device(_cfg("run.device=cpu", "federation.onnx_clients=1")) == "cpu"
    if available:
        for name in ("cuda", "auto"):
            with pytest.raises(ConfigError, match=rf"run.device='{name}' runs on cuda.*federation.onnx_clients"):
                _cfg(f"run.device={name}", "federation.onnx_clients=1").validate()
    else:
        assert resolve_device(_cfg("run.device=auto", "federation.onnx_clients=1")) == "cpu"


def test_the_flower_app_refuses_any_device_but_cpu():
    from baffle.flower.config import parse_run_config, to_run_config

    rc = to_run_config(Config())
    assert parse_run_config(rc)[0].run.device == "cpu"
    with pytest.raises(ConfigError, match=r"run-device \(run.device='auto'\).*CPU only"):
        parse_run_config({**rc, "run-device": "auto"})


# ---- CPU runs are unchanged ------------------------------------------------------------------------------
def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _run(rounds: int, **extra):
    from baffle.sim.loop import Simulation

    sim = Simulation(tiny(rounds, **extra), None, progress=False)
    sim.run()
    return sim


def test_a_cuda_run_turns_tf32_off_and_a_cpu_run_leaves_torchs_switches_alone():
    # TF32 convolutions (cuDNN's default) put ~1e-3 relative error on every forward: larger than the
    # loss differences a client uploads. The switches are process-wide: restored afterwards.
    from baffle.sim.factory import exact_float32

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        exact_float32(torch.device("cpu"))
        assert cudnn.allow_tf32 and matmul.allow_tf32
        exact_float32(torch.device("cuda"))
        assert not cudnn.allow_tf32 and not matmul.allow_tf32
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


@no_cuda
@pytest.mark.parametrize("extra", [{}, {"estimator.engine": "batched", "estimator.fuse_clients": "true",
                                        "estimator.noise": "v2-gauss", "model.prune": 0.5}])
def test_auto_resolves_to_cpu_here_and_trains_bit_identically(extra):
    cpu, auto = _run(3, **extra), _run(3, **extra, **{"run.device": "auto"})
    assert auto.fed.device == torch.device("cpu")
    for a, b in [(cpu.fed.strategy.model.state_dict(), auto.fed.strategy.model.state_dict()),
                 (cpu.fed.strategy.eval_weights(), auto.fed.strategy.eval_weights())]:
        assert _digest(a) == _digest(b)


@pytest.mark.parametrize("device", SEEN, ids=str)
@pytest.mark.parametrize("method", ["baffle", "baffle_local", "baffle_multistep", "fedsgd", "fedavg"])
def test_a_run_keeps_models_ema_and_optimizer_state_on_its_device(device, method):
    extra = {"run.device": device.type, "run.method": method, "federation.local_steps": 2}
    if method == "baffle":  # the server's own engine pass too
        extra["federation.aggregator"] = "fltrust"
    sim = _run(2, **extra)
    fed = sim.fed
    assert fed.device == fed.strategy.device == device
    tensors = {f"{where}.{k}": v for where, m in [("server", fed.strategy.model), ("eval", fed.eval_model),
                                                    ("client", fed.clients[0].model)] for k, v in m.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in fed.strategy.ema.shadow.items()})
    for i, st in fed.strategy.optimizer.state.items():
        tensors.update({f"optim.{k}": v for k, v in st.items() if k != "step"})  # Adam's step count: CPU by design
    assert tensors and {k for k, v in tensors.items() if v.device.type != device.type} == set()


# ---- every tensor our code creates is on the device it was given -----------------------------------------
def _model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 6 * 6, 3))
    return m.to(device)


@pytest.mark.parametrize("device", SEEN, ids=str)
@pytest.mark.parametrize("kind", noise.KINDS)
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_engines_create_every_tensor_on_the_parameters_device(device, kind, scheme):
    model = _model(device)
    params = estimator.select_parameters(model)
    n = estimator.num_elements(params)
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))  # drawn on the CPU, as a client's sampler does
    seeds = noise.round_seeds(0, 0, 5)
    cpu_model = _model(torch.device("cpu"))
    reference = LoopEngine()(cpu_model, estimator.select_parameters(cpu_model), x, y, seeds, 1e-2, scheme, noise=kind)
    for engine in (LoopEngine(), BatchedEngine(), MaskedEngine(np.ones(n, dtype=bool))):
        w0 = {k: v.clone() for k, v in model.state_dict().items()}
        with TRAP:
            got = engine(model, params, x, y, seeds, 1e-2, scheme, noise=kind)
        assert all(torch.equal(w0[k], v) for k, v in model.state_dict().items()), engine.name
        assert got.dtype == np.float32 and got.shape == (5,)
        if device.type == "cpu" and engine.name != "batched":  # same operations: same bits
            assert np.array_equal(got, reference), engine.name
        else:  # a chunked forward (or another device's kernels) rounds differently
            np.testing.assert_allclose(got, reference, rtol=1e-3, atol=1e-5)
    # the fused path: several clients' CPU minibatches in one pass, with a loss that is not F.cross_entropy
    # itself (per-member losses taken one by one)
    with TRAP:
        fused = BatchedEngine().multi_client(model, params, [(x, y), (x[:3], y[:3])], seeds, 1e-2, scheme,
                                             lambda z, t: torch.nn.functional.cross_entropy(z, t), noise=kind)
    np.testing.assert_allclose(fused[0], reference, rtol=1e-3, atol=1e-5)


RAGGED = [(0, 1), (3, 70), (63, 65), (64, 128), (5, noise_torch.BLOCK + 9), (noise_torch.BLOCK - 1, 2 * noise_torch.BLOCK + 3)]


@pytest.mark.parametrize("device", SEEN, ids=str)
@pytest.mark.parametrize("kind", ["v2-gauss", "v2-rademacher"])
def test_v2_torch_kernels_on_a_device_equal_numpy_bit_for_bit_at_ragged_offsets(device, kind):
    seed = int(noise.round_seeds(1234, 7, 1)[0])
    for offset, n in RAGGED:
        with TRAP:
            got = noise_torch.direction(seed, n, kind, offset, device=device, impl="torch")
        assert got.device.type == device.type
        assert got.cpu().numpy().tobytes() == noise.direction(seed, n, kind, offset=offset).tobytes(), (offset, n)


@pytest.mark.parametrize("device", SEEN, ids=str)
@pytest.mark.parametrize("kind", noise.KINDS)
def test_reconstruction_on_a_device_is_the_numpy_reconstruction(device, kind):
    seeds, n = noise.round_seeds(3, 1, 7), 70_001
    d = np.random.default_rng(0).standard_normal(7).astype(np.float32)
    with TRAP:
        g = reconstruct_on(device, d, seeds, 1e-3, n, noise=kind)
        if kind != "v1":  # the kernels a CUDA server runs, here on this device
            g_torch = reconstruct_torch(d, seeds, 1e-3, n, noise=kind, device=device, block=30_000)
    ref = reconstruct(d, seeds, 1e-3, n, noise=kind)
    assert g.device.type == device.type and g.dtype == torch.float32
    assert g.cpu().numpy().tobytes() == ref.tobytes()
    if kind != "v1":
        assert g_torch.cpu().numpy().tobytes() == ref.tobytes()


@pytest.mark.parametrize("device", SEEN, ids=str)
def test_evaluation_and_the_backprop_twin_move_cpu_batches_to_the_model(device):
    gen = torch.Generator().manual_seed(0)
    data = Dataset(torch.randn(40, 1, 8, 8, generator=gen), torch.randint(0, 3, (40,), generator=gen), 3, "toy")
    model = _model(device)
    with TRAP:
        acc, loss = evaluate(model, data, batch_size=16)
    cpu_acc, cpu_loss = evaluate(_model(torch.device("cpu")), data, batch_size=16)
    assert acc == cpu_acc and loss == pytest.approx(cpu_loss, rel=1e-5)
    client = BPClient(0, data, np.arange(40), model, batch_size=8, seed=1)
    with TRAP:
        grad, count = client.gradient(None)
        up = client.local_sgd({k: v.clone() for k, v in model.state_dict().items()}, 0, steps=2, lr=0.1)
    assert isinstance(grad, np.ndarray) and grad.shape == (estimator.num_elements(estimator.select_parameters(model)),)
    assert count == 8 and all(v.device.type == device.type for v in up.weights.values())


@pytest.mark.parametrize("device", SEEN, ids=str)
@pytest.mark.parametrize("kind", ["v1", "v2-rademacher"])
def test_server_step_reconstructs_and_steps_on_its_models_device(device, kind):
    from baffle.pruning import magnitude_mask
    from baffle.server.strategy import ServerStrategy

    cfg = tiny(2, **{"optim.name": "sgd", "optim.momentum": 0.9, "estimator.noise": kind})
    cpu_model = _model(torch.device("cpu"))
    cfg.model.trainable = []
    server, cpu_server = ServerStrategy(_model(device), cfg), ServerStrategy(cpu_model, cfg)
    mask = magnitude_mask(cpu_server.params, 0.5)
    for s in (server, cpu_server):
        s.set_mask(mask)
    diffs = np.linspace(-1, 1, cfg.estimator.K).astype(np.float32)
    with TRAP:  # SGD keeps no CPU-side scalars, so the whole server step runs inside the trap
        for r in range(2):
            server.apply_loss_diffs(r, diffs)
    for r in range(2):
        cpu_server.apply_loss_diffs(r, diffs)
    assert server.device == device
    for (k, v), (_, w) in zip(server.model.state_dict().items(), cpu_server.model.state_dict().items()):
        assert v.device.type == device.type
        if device.type == "cpu":
            assert torch.equal(v, w), k
        else:
            torch.testing.assert_close(v.cpu(), w, rtol=1e-5, atol=1e-6)


# ---- the GPU check script, as far as a CPU can run it ------------------------------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@no_cuda
def test_gpu_check_sh_says_there_is_no_cuda_and_runs_nothing(tmp_path):
    import subprocess

    r = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh")], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)}, cwd=REPO)
    assert r.returncode == 2 and "no CUDA device" in r.stderr and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_gpu_noise_check_runs_its_noise_section_on_the_cpu(tmp_path):
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(REPO / "benchmarks/gpu_noise_check.py"), "--device", "cpu", "--quick",
                        "--sections", "noise", "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["noise"]["all_identical"] and len(res["noise"]["checks"]) == 2 * 3 * 8 + 3 + 2


def test_gpu_check_doc_section_counts_what_the_json_holds():
    """The docs' device section is read off a run's JSON: a failed bit-identity check must show in its count."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("gpu_noise_check", REPO / "benchmarks/gpu_noise_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = json.loads((REPO / "benchmarks/results/gpu_check_h200.json").read_text())
    n = len(res["noise"]["checks"])
    text = mod.section(res, "x.json")
    assert text.startswith(mod.BEGIN) and text.rstrip().endswith(mod.END)
    assert f"{n} of {n} checks identical" in text
    res["noise"]["checks"][0]["identical"] = False
    assert f"{n - 1} of {n} checks identical" in mod.section(res, "x.json")
