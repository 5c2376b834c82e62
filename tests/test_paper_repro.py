"""experiments/paper_repro.toml encodes the paper's MNIST setting with the mappings docs/paper-repro.md states, and
experiments/paper_repro_gpu.sh refuses to run without CUDA."""

import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from baffle.sweep import load_sweep, make_config

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = math.ceil(60_000 // 10 / 32)  # 10 IID clients of 6,000 MNIST images, batch 32, short last batch kept


def _configs(tmp_path):
    sweep = load_sweep(ROOT / "experiments" / "paper_repro.toml", out=tmp_path / "out")
    return {spec.name: make_config(spec, []) for spec in sweep.runs}


def test_paper_repro_sweep_maps_20_epochs(tmp_path):
    cfgs = _configs(tmp_path)
    assert sorted(cfgs) == ["epoch_k100", "epoch_k500", "fedsgd_k100", "fedsgd_k500", "fedzo"]
    assert STEPS_PER_EPOCH == 188
    for name, c in cfgs.items():  # the paper's code defaults / README MNIST command
        assert (c.model.name, c.model.norm, c.data.image_size, c.data.num_clients, c.data.partition) == ("lenet", "none", 32, 10, "iid")
        assert (c.federation.batch_size, c.estimator.sigma, c.optim.clip, c.optim.ema_decay, c.optim.ema_warmup) == (32, 1e-4, 0.3, 0.995, True)
        assert c.estimator.K == (500 if name.endswith("k500") else 100)
        if name.startswith("fedsgd"):
            assert c.run.method == "baffle" and c.run.rounds == 20 * STEPS_PER_EPOCH
            assert c.optim.ema_every == c.run.eval_every == STEPS_PER_EPOCH and c.optim.lr == 0.01
        else:
            assert c.run.method == "baffle_local" and c.run.rounds == 20 and c.optim.ema_every == 1
            assert c.federation.local_steps == STEPS_PER_EPOCH and c.federation.local_lr == 0.01
            assert c.federation.local_optimizer == ("sgd" if name == "fedzo" else "adam")
    same = ("estimator", "run", "data", "model")  # FedZO: epoch_k100's budget, only the local optimizer differs
    assert all(getattr(cfgs["fedzo"], s) == getattr(cfgs["epoch_k100"], s) for s in same)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_script_refuses_without_cuda(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    r = subprocess.run(["bash", str(ROOT / "experiments" / "paper_repro_gpu.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no CUDA device" in r.stderr
    assert not (tmp_path / "paper_repro").exists()
