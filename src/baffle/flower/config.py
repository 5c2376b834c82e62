"""``[tool.flwr.app.config]`` (kebab-case, flat) <-> ``baffle.config.Config`` (sections) + Flower options.

Flower run configs are flat and only hold bool/int/float/str, so every ``baffle run`` key that the
Flower app supports gets a kebab-case name here; lists (``optim-milestones``, ``model-trainable``) are
comma-separated strings, parsed by ``Config.set`` exactly like ``--set`` on the command line. The keys
that only make sense on Flower (transport mode, SecAgg+, where to write results) go to
``FlowerOptions``. Unknown keys are an error naming the valid ones: a typo must not silently train
with a default.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from baffle.config import Config, ConfigError

# kebab-case app key -> dotted baffle config key (the same key `baffle run --set` takes)
KEY_MAP: dict[str, str] = {
    "num-server-rounds": "run.rounds",
    "seed": "run.seed",
    "eval-every": "run.eval_every",
    "threads": "run.threads",
    "data-name": "data.name",
    "data-root": "data.root",
    "image-size": "data.image_size",
    "partition": "data.partition",
    "alpha": "data.alpha",
    "shards-per-client": "data.shards_per_client",
    "train-subset": "data.train_subset",
    "test-subset": "data.test_subset",
    "model-name": "model.name",
    "model-activation": "model.activation",
    "model-norm": "model.norm",
    "model-init": "model.init",
    "model-trainable": "model.trainable",
    "estimator-k": "estimator.K",
    "estimator-sigma": "estimator.sigma",
    "estimator-scheme": "estimator.scheme",
    "estimator-engine": "estimator.engine",
    "estimator-max-memory-mb": "estimator.max_memory_mb",
    "clients-per-round": "federation.clients_per_round",
    "batch-size": "federation.batch_size",
    "aggregator": "federation.aggregator",
    "trim-fraction": "federation.trim_fraction",
    "min-clients": "federation.min_clients",
    "optim-name": "optim.name",
    "optim-lr": "optim.lr",
    "optim-momentum": "optim.momentum",
    "optim-betas": "optim.betas",
    "optim-weight-decay": "optim.weight_decay",
    "optim-clip": "optim.clip",
    "optim-milestones": "optim.milestones",
    "optim-gamma": "optim.gamma",
    "optim-cosine": "optim.cosine",
    "optim-warmup": "optim.warmup",
    "optim-ema-decay": "optim.ema_decay",
    "optim-ema-every": "optim.ema_every",
}

TRANSPORTS = ("weights", "replay")


@dataclass
class FlowerOptions:
    """What only the Flower app needs. Kebab-case keys: the field name with ``_`` -> ``-``."""

    transport: str = "weights"  # weights: send the global weights; replay: send aggregated K-vectors only
    secure: bool = False  # SecAgg+ on the K-vectors (the server sees only their weighted sum)
    secagg_clip: float = 0.5  # |loss difference| clipping range before quantization
    secagg_bits: int = 22  # quantization levels = 2**bits over [-clip, clip]
    secagg_modulus_bits: int = 32  # masks and sums live in Z_(2**modulus_bits); Flower needs <= 32
    secagg_num_shares: float = 1.0  # Shamir shares per node: fraction of sampled nodes (<=1) or a count
    secagg_threshold: float = 0.5  # shares needed to unmask: fraction of num_shares (<=1) or a count
    result_dir: str = ""  # where the ServerApp writes metrics.jsonl and result.json ("" = nowhere)
    min_nodes: int = 2  # wait for at least this many connected nodes before round 1
    node_wait_s: float = 60.0  # how long to wait for them
    round_timeout_s: float = 600.0  # a node that has not answered by then is dropped from the round

    def validate(self) -> "FlowerOptions":
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"transport={self.transport!r} is not valid; choose one of: {', '.join(TRANSPORTS)}")
        if self.secure and self.transport != "weights":
            raise ConfigError("secure=true supports transport='weights' only (Flower's SecAgg+ workflow is the legacy one)")
        if not self.secagg_clip > 0:
            raise ConfigError(f"secagg-clip must be > 0, got {self.secagg_clip}")
        if not 2 <= self.secagg_bits < self.secagg_modulus_bits:
            raise ConfigError(f"secagg-bits must be in [2, secagg-modulus-bits), got {self.secagg_bits}")
        if not 8 <= self.secagg_modulus_bits <= 32:
            raise ConfigError(f"secagg-modulus-bits must be in [8, 32] (Flower masks are < 2**32), got {self.secagg_modulus_bits}")
        if not self.secagg_num_shares > 0:
            raise ConfigError(f"secagg-num-shares must be > 0, got {self.secagg_num_shares}")
        if not self.secagg_threshold > 0:
            raise ConfigError(f"secagg-threshold must be > 0, got {self.secagg_threshold}")
        if self.min_nodes < 1:
            raise ConfigError(f"min-nodes must be >= 1, got {self.min_nodes}")
        if not self.node_wait_s > 0 or not self.round_timeout_s > 0:
            raise ConfigError("node-wait-s and round-timeout-s must be > 0")
        return self


def _option_keys() -> dict[str, str]:
    return {f.name.replace("_", "-"): f.name for f in fields(FlowerOptions)}


def valid_keys() -> list[str]:
    return sorted([*KEY_MAP, *_option_keys()])


def parse_run_config(run_config: Mapping[str, Any]) -> tuple[Config, FlowerOptions]:
    """Build (validated Config, validated FlowerOptions) from a Flower run config."""
    cfg = Config()
    opts = FlowerOptions()
    option_keys = _option_keys()
    for key, value in run_config.items():
        if key in KEY_MAP:
            cfg.set(KEY_MAP[key], value)
        elif key in option_keys:
            name = option_keys[key]
            current = getattr(opts, name)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{key} must be true or false, got {value!r}")
            elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif not isinstance(value, type(current)) or isinstance(value, bool):
                raise ConfigError(f"{key} must be a {type(current).__name__}, got {value!r}")
            setattr(opts, name, value)
        else:
            raise ConfigError(f"unknown Flower app config key {key!r}; valid keys: {', '.join(valid_keys())}")
    cfg.run.method = "baffle"  # the Flower app runs the scalar protocol only
    cfg.validate()
    return cfg, opts.validate()


def to_run_config(cfg: Config, opts: FlowerOptions | None = None) -> dict[str, Any]:
    """The inverse: a flat run config reproducing ``cfg`` (used to compare with ``baffle run``)."""
    out: dict[str, Any] = {}
    for key, dotted in KEY_MAP.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        out[key] = ",".join(str(v) for v in value) if isinstance(value, list) else value
    for key, name in _option_keys().items():
        out[key] = getattr(opts or FlowerOptions(), name)
    return out
