"""Forward-only training on real MNIST beats chance by a wide margin (small, CI-sized) — and a slow,
full-size version that checks the default job's accuracy."""

import pytest

from baffle.config import Config
from baffle.server import Simulation


def test_short_forward_only_run_on_real_mnist_beats_chance(tmp_path):
    cfg = Config()
    cfg.apply_overrides(
        [
            "data.train_subset=6000",
            "data.test_subset=1000",
            "data.eval_train_samples=500",
            "estimator.K=20",
            "federation.batch_size=8",
            "run.rounds=80",
            "run.eval_every=80",
            "optim.lr=0.1",
        ]
    )
    summary = Simulation(cfg.validate(), tmp_path, progress=False).run()
    assert summary["total_backward_passes"] == 0
    assert summary["final_test_acc"] > 0.25, summary  # chance is 0.1


@pytest.mark.slow
def test_default_job_reaches_its_documented_accuracy(tmp_path):
    summary = Simulation(Config().validate(), tmp_path, progress=False).run()
    assert summary["final_test_acc"] > 0.75, summary
