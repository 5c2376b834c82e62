"""``[tool.flwr.app.config]`` (kebab-case, flat) <-> ``baffle.config.Config`` (sections) + Flower options.

The app's keys are derived from ``Config``, not listed by hand: ``section.key`` becomes ``section-key``
(lower case, ``_`` -> ``-``: ``estimator.K`` -> ``estimator-k``, ``federation.batch_size`` ->
``federation-batch-size``), except two keys that carry Flower's own names because Flower users expect them
there: ``num-server-rounds`` (``run.rounds``) and ``fraction-train`` (``federation.clients_per_round``: a
fraction of the nodes, or a whole count > 1 as in ``baffle run``). The defaults are ``Config()``'s, so
``[tool.flwr.app.config]`` in pyproject.toml is generated from this module (``render_app_config``,
``scripts/flower_app_config.py``) and a test checks it has not drifted.

Flower run configs are flat and hold only bool/int/float/str, so list keys (``model-trainable``,
``optim-betas``, ``optim-milestones``, ``data-classes``) are comma-separated strings, parsed by
``Config.set`` exactly like ``--set`` on the command line. A few keys have no meaning in the Flower app
(``NOT_ON_FLOWER`` says why for each) and are not app keys. The keys that only make sense on Flower
(transport, SecAgg+, where to write results, node waiting) go to ``FlowerOptions``. Unknown keys are an
error naming the valid ones: a typo must not silently train with a default. Flower itself refuses a
``--run-config`` key that is not in the pyproject table, so every app key is in that table.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from baffle.config import Config, ConfigError
from baffle.config.choices import SCALAR_METHODS
from baffle.flower.datasets import PARTITIONERS  # names only: flwr-datasets is imported when a node partitions

# keys that keep Flower's name (what Flower users write in every Flower app)
FLOWER_NAMES: dict[str, str] = {"run.rounds": "num-server-rounds", "federation.clients_per_round": "fraction-train"}

# the methods the app runs: scalar uploads only (weight-upload methods would need the model to travel up)
APP_METHODS = SCALAR_METHODS
# `baffle run` keys that are not app keys, and why (delete an entry when the Flower path implements it)
NOT_ON_FLOWER: dict[str, str] = {
    "data.num_clients": "the number of partitions is the nodes' num-partitions (their node config)",
    "estimator.fuse_clients": "simulator-only: each Flower node computes its own upload",
    "federation.local_optimizer": "local training with weight uploads (run.method=baffle_local) is not run by the app",
    "federation.onnx_clients": "simulator-only: a Flower node runs the torch client",
    "federation.onnx_precision": "simulator-only: a Flower node runs the torch client",
    "federation.dropout_rate": "simulator-only fault: real nodes fail for real (see round-timeout-s)",
    "federation.straggler_delay_s": "simulator-only fault: real nodes are slow for real (see round-timeout-s)",
    "federation.timeout_s": "simulator-only: use the Flower option round-timeout-s",
    "federation.attack": "simulator-only: Byzantine nodes are not simulated by the app",
    "federation.attack_fraction": "simulator-only: Byzantine nodes are not simulated by the app",
}

TRANSPORTS = ("auto", "weights", "replay")


@dataclass
class FlowerOptions:
    """What only the Flower app needs. Kebab-case keys: the field name with ``_`` -> ``-``."""

    # auto: replay (aggregated K-vectors only) to nodes whose replica is close enough, else the server state once
    # (its replica from then on); weights with SecAgg+. weights: the global weights every round. replay: K-vectors only
    transport: str = "auto"
    secure: bool = False  # SecAgg+ on the K-vectors (the server sees only their weighted sum)
    secagg_clip: float = 0.5  # |loss difference| clipping range before quantization
    secagg_bits: int = 22  # quantization levels = 2**bits over [-clip, clip]
    secagg_modulus_bits: int = 32  # masks and sums live in Z_(2**modulus_bits); Flower needs <= 32
    secagg_num_shares: float = 1.0  # Shamir shares per node: fraction of sampled nodes (<=1) or a count
    secagg_threshold: float = 0.5  # shares needed to unmask: fraction of num_shares (<=1) or a count
    flwr_partitioner: str = ""  # "": baffle's data.partition; iid|dirichlet|pathological|natural-id: flwr-datasets' (flower.datasets)
    result_dir: str = ""  # the run dir (as `baffle run --out`): config, metrics, summary, curves, checkpoint, result.json
    resume: bool = False  # continue the run in result-dir from its checkpoint (as `baffle run --resume`)
    overwrite: bool = False  # delete the run already in result-dir first (as `baffle run --overwrite`)
    min_nodes: int = 2  # wait for at least this many connected nodes before round 1
    node_wait_s: float = 60.0  # how long to wait for them
    round_timeout_s: float = 600.0  # a node that has not answered by then is dropped from the round

    def validate(self) -> "FlowerOptions":
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"transport={self.transport!r} is not valid; choose one of: {', '.join(TRANSPORTS)}")
        if self.flwr_partitioner and self.flwr_partitioner not in PARTITIONERS:
            raise ConfigError(f"flwr-partitioner={self.flwr_partitioner!r} is not valid; choose one of: {', '.join(PARTITIONERS)} "
                              "(or \"\" for baffle's data-partition)")
        if self.secure and self.transport == "replay":
            raise ConfigError("secure=true supports transport='weights' (or 'auto', which sends weights with SecAgg+) "
                              "only: Flower's SecAgg+ workflow is the legacy one")
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
        if (self.resume or self.overwrite) and not self.result_dir:
            raise ConfigError(f"{'resume' if self.resume else 'overwrite'}=true needs result-dir (the run directory)")
        if self.resume and self.overwrite:
            raise ConfigError("resume=true continues the run in result-dir, overwrite=true deletes it: choose one")
        if self.min_nodes < 1:
            raise ConfigError(f"min-nodes must be >= 1, got {self.min_nodes}")
        if not self.node_wait_s > 0 or not self.round_timeout_s > 0:
            raise ConfigError("node-wait-s and round-timeout-s must be > 0")
        return self


def derived_name(dotted: str) -> str:
    """``section.key`` -> ``section-key`` (lower case, ``_`` -> ``-``), the mechanical app name."""
    return dotted.replace(".", "-").replace("_", "-").lower()


def app_key(dotted: str) -> str:
    return FLOWER_NAMES.get(dotted) or derived_name(dotted)


def config_keys() -> dict[str, str]:
    """App key -> dotted ``Config`` key, for every ``baffle run`` key the app takes (declaration order)."""
    return {app_key(k): k for k in Config.keys() if k not in NOT_ON_FLOWER}


def option_keys() -> dict[str, str]:
    """App key -> ``FlowerOptions`` field."""
    return {f.name.replace("_", "-"): f.name for f in fields(FlowerOptions)}


def valid_keys() -> list[str]:
    return [*config_keys(), *option_keys()]


def _unknown_key_error(key: str) -> ConfigError:
    derived = {derived_name(k): k for k in Config.keys()}
    if key in derived and derived[key] in NOT_ON_FLOWER:
        dotted = derived[key]
        return ConfigError(f"{key} ({dotted}) is not a Flower app key: {NOT_ON_FLOWER[dotted]}")
    if key in derived and derived[key] in FLOWER_NAMES:
        return ConfigError(f"{key} is called {FLOWER_NAMES[derived[key]]!r} in the Flower app (Flower's own name)")
    hints = [app_key(d) for name, d in derived.items() if name.endswith("-" + key) and d not in NOT_ON_FLOWER]
    hint = f"; did you mean {' or '.join(repr(h) for h in hints)}?" if hints else ""
    return ConfigError(f"unknown Flower app config key {key!r}{hint} valid keys: {', '.join(valid_keys())}")


def parse_run_config(run_config: Mapping[str, Any]) -> tuple[Config, FlowerOptions]:
    """Build (validated Config, validated FlowerOptions) from a Flower run config."""
    cfg = Config()
    opts = FlowerOptions()
    cfg_keys, opt_keys = config_keys(), option_keys()
    for key, value in run_config.items():
        if key in cfg_keys:
            cfg.set(cfg_keys[key], value)
        elif key in opt_keys:
            name = opt_keys[key]
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
            raise _unknown_key_error(key)
    cfg.validate()
    if cfg.run.method not in APP_METHODS:
        raise ConfigError(f"run-method={cfg.run.method!r}: the Flower app runs the scalar-upload methods "
                          f"{', '.join(APP_METHODS)} only (the others upload weights or gradients)")
    if cfg.run.device != "cpu":  # the app builds its models through sim.factory's CPU functions
        raise ConfigError(f"run-device (run.device={cfg.run.device!r}): the Flower app runs on the CPU only; use 'cpu'")
    if cfg.privacy.mode == "central" and opts.secure:
        raise ConfigError("privacy-mode='central' clips and noises each node's K-vector on the server, which SecAgg+ "
                          "hides from it: use privacy-mode='local' with secure=true")
    return cfg, opts.validate()


def _flat(value: Any) -> Any:
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


def to_run_config(cfg: Config | None = None, opts: FlowerOptions | None = None) -> dict[str, Any]:
    """The inverse: the flat run config of ``cfg`` and ``opts`` (defaults: the app's defaults)."""
    cfg, opts = cfg or Config(), opts or FlowerOptions()
    out = {key: _flat(cfg.get(dotted)) for key, dotted in config_keys().items()}
    out.update({key: getattr(opts, name) for key, name in option_keys().items()})
    return out


def render_app_config() -> str:
    """The ``[tool.flwr.app.config]`` table of pyproject.toml: every app key at its default."""
    from baffle.config.values import toml_value

    lines = [
        "[tool.flwr.app.config]",
        "# GENERATED by scripts/flower_app_config.py from baffle.config.Config() and baffle.flower.config:",
        "# the `baffle run` defaults, every key pinned. Edit the code, not this table (a test compares them).",
    ]
    section = None
    for key, dotted in config_keys().items():
        if dotted.split(".")[0] != section:
            section = dotted.split(".")[0]
            lines.append(f"# [{section}] -> baffle run's {section}.* keys")
        lines.append(f"{key} = {toml_value(_flat(Config().get(dotted)))}")
    lines.append("# Flower-only options (baffle.flower.config.FlowerOptions)")
    for key, value in to_run_config().items():
        if key in option_keys():
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"
