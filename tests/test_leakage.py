"""experiments/leakage.py (issue 17 item 6): its pieces are right and its quick run is a real attack.

The quick run (batch 1 and 4, K = 20, one target, 100 Adam steps, ~20 s) must write every cell of its grid,
and the gradient-inversion attack on a BP client's batch-1 gradient must recover the label and beat the
no-upload floors, or the table's BAFFLE rows would be measured with an attack that does not work.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import leakage  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 5), (4, 7), (2, 9)])
def test_assignment_is_the_minimum_cost_matching(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.normal(size=shape)
        cols = leakage.assignment(cost)
        assert len(set(cols)) == shape[0]
        best = min(cost[np.arange(shape[0]), list(p)].sum() for p in itertools.permutations(range(shape[1]), shape[0]))
        assert cost[np.arange(shape[0]), cols].sum() == pytest.approx(best)
    with pytest.raises(ValueError, match="rows <= columns"):
        leakage.assignment(np.zeros((3, 2)))


def test_ssim_and_psnr():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(3, 1, 14, 14, generator=gen)
    b = torch.rand(3, 1, 14, 14, generator=gen)
    assert np.allclose(leakage.ssim(a, a), 1.0)
    assert (leakage.ssim(a, b) < 0.3).all()
    assert (leakage.ssim(a, 0.9 * a + 0.1 * b) > leakage.ssim(a, 0.5 * a + 0.5 * b)).all()
    p = leakage.psnr_matrix(a, torch.cat([a[:1], b]))
    assert p[0, 0] == pytest.approx(100.0)  # identical: mse clamped at 1e-10
    assert 0 < p[1, 2] < 20


def test_labels_from_the_last_layer():
    """Exact gradients give every label (iDLG at batch 1, counts at batch 8); a K = 1000 estimate's pooled
    last-layer signal gives the batch-1 label too."""
    torch.set_num_threads(1)
    task = leakage.load_task(0)
    rng = np.random.default_rng(5)
    for b in (1, 8):
        idx = rng.choice(len(task.train_y), b, replace=False)
        x, y = task.train_x[idx], task.train_y[idx]
        g = leakage.flat_grad(task, x, y).numpy()
        labels = leakage.recover_labels(leakage.last_layer_signal(task, g, exact=True), b, task.p_hat)
        assert sorted(labels.tolist()) == sorted(y.tolist())
    idx = rng.choice(len(task.train_y), 1)
    seeds = leakage.noise.round_seeds(0, 1, 1000)
    d = leakage.client_scalars(task, task.train_x[idx], task.train_y[idx], seeds)
    g_hat = leakage.reconstruct(d, seeds, task.cfg.estimator.sigma, task.n, noise=task.cfg.estimator.noise)
    assert leakage.recover_labels(leakage.last_layer_signal(task, g_hat, exact=False), 1, task.p_hat)[0] == int(task.train_y[idx][0])


def test_quick_run_has_every_cell_and_the_bp_attack_works(tmp_path):
    out = tmp_path / "leakage.json"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "leakage.py"), "--quick", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    res = json.loads(out.read_text())
    g = res["grid"]
    cells = {(r["state"], r["attack"], r["variant"], r["B"], r["K"]): r for r in res["summary"]}
    want = set()
    for s, b in itertools.product(g["states"], g["sizes"]):
        want |= {(s, "floor", v, b, None) for v in ("mean_image", "random_images", "random_images_10x")}
        want.add((s, "bp", "gradient", b, None))
        for k in g["ks"]:
            want |= {(s, "baffle", v, b, k) for v in ("scalars", "g_hat")}
            want |= {(s, "secagg", v, b, k) for v in g["secagg_variants"]}
    assert set(cells) == want
    assert all(c["targets"] == g["targets"] for c in cells.values())
    assert len(res["rows"]) == len(want) * g["targets"]
    bp = cells[(0, "bp", "gradient", 1, None)]
    assert bp["labels"] == 1.0
    for floor in ("mean_image", "random_images"):
        assert bp["psnr"] > cells[(0, "floor", floor, 1, None)]["psnr"] + 0.5
        assert bp["ssim"] > cells[(0, "floor", floor, 1, None)]["ssim"] + 0.1
    assert "leakage:begin" in leakage.section(res) and "| BP client, FedSGD gradient |" in leakage.section(res)
