"""A tiny, fast federation config shared by the reliability tests (synthetic data, MLP, 4 clients).

Only the last two layers train: seeded directions over 109k parameters would dominate the tests' time.
"""

from baffle.config import Config


def tiny(rounds: int = 4, **extra) -> Config:
    cfg = Config()
    cfg.apply_overrides(
        [
            "data.name=synthetic",
            "data.num_clients=4",
            "data.eval_train_samples=200",
            "model.name=mlp",
            "model.trainable=features.4.*,classifier.*",  # 8.9k of 109k parameters: cheap directions
            "estimator.K=16",
            "estimator.sigma=1e-2",
            "estimator.engine=loop",
            "federation.batch_size=16",
            f"run.rounds={rounds}",
            "run.eval_every=2",
            "run.checkpoint_every=1",
            "run.threads=1",
            "optim.lr=0.01",
            "optim.ema_decay=0.9",
        ]
        + [f"{k}={v}" for k, v in extra.items()]
    )
    return cfg.validate()
