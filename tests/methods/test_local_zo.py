"""baffle_local (the paper's epoch-level mode) with federation.local_optimizer, and optim.ema_warmup (the paper's
torch_ema warm-up): what experiments/paper_repro.toml relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baffle.config import Config
from baffle.records import checkpoint
from baffle.server.optim import EMA
from baffle.sim.loop import Simulation
from baffle.testing import tiny
from baffle.testing.crash import interrupted_run


def _flat(state: dict) -> np.ndarray:
    return torch.cat([v.detach().reshape(-1).double() for v in state.values()]).numpy()


def _one_local_step(optimizer: str, lr: float) -> np.ndarray:
    """The global model's change after one round of one client taking one local step (no EMA)."""
    cfg = tiny(1, **{"run.method": "baffle_local", "data.num_clients": 1, "federation.local_steps": 1,
                     "federation.local_lr": lr, "federation.local_optimizer": optimizer, "optim.ema_decay": 0.0})
    sim = Simulation(cfg, None, progress=False)
    start = _flat(sim.fed.strategy.model.state_dict()).copy()
    sim.run()
    return _flat(sim.fed.strategy.model.state_dict()) - start


def test_sgd_local_steps_are_plain_sgd_and_adam_stays_the_default():
    assert Config().federation.local_optimizer == "adam"
    sgd, sgd2 = _one_local_step("sgd", 0.01), _one_local_step("sgd", 0.02)
    adam = _one_local_step("adam", 0.01)
    np.testing.assert_allclose(sgd2, 2 * sgd, rtol=1e-4, atol=1e-7)  # delta = -lr * g: linear in lr, same g
    moved = np.abs(sgd) > 0
    assert moved.sum() > 100
    ratio = np.abs(sgd[moved]) / 0.01  # = |g_i|: spread over orders of magnitude for SGD ...
    assert ratio.max() / np.median(ratio) > 3
    moved_adam = np.abs(adam) > 0  # ... while Adam's first step moves every coordinate by about lr
    np.testing.assert_allclose(np.abs(adam[moved_adam]), 0.01, rtol=0.05)
    assert not np.allclose(sgd, adam)


def test_ema_warmup_follows_torch_ema():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model, 0.995, warmup=True)
    decays = []
    for n in range(1, 31):
        decays.append(ema.current_decay())
        before = ema.shadow["weight"].clone()
        with torch.no_grad():
            model.weight.fill_(float(n))
        ema.update(model)
        d = decays[-1]
        torch.testing.assert_close(ema.shadow["weight"], d * before + (1 - d) * float(n))
    assert decays[0] == pytest.approx(2 / 11) and decays[19] == pytest.approx(21 / 30)
    assert all(d == pytest.approx(min(0.995, (1 + n) / (10 + n))) for n, d in enumerate(decays, 1))
    assert EMA(model, 0.995).current_decay() == 0.995  # off by default: the old fixed decay
    restored = EMA(model, 0.995, warmup=True)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 30 and restored.current_decay() == ema.current_decay()


def test_ema_warmup_resumes_exactly(tmp_path):
    cfg = tiny(4, **{"optim.ema_warmup": True, "optim.ema_decay": 0.995})
    Simulation(cfg, tmp_path / "full", progress=False).run()
    interrupted_run(cfg, tmp_path / "part", at_round=2)
    sim = Simulation(Config.load(tmp_path / "part" / "config.toml"), tmp_path / "part", progress=False)
    sim.resume()
    sim.run()
    a = checkpoint.load(tmp_path / "full" / "checkpoint.pt")["server"]["ema"]
    b = checkpoint.load(tmp_path / "part" / "checkpoint.pt")["server"]["ema"]
    assert a["num_updates"] == b["num_updates"] == 4
    for k in a["shadow"]:
        assert torch.equal(a["shadow"][k], b["shadow"][k]), k
