"""Run configuration: dataclasses, TOML files, ``--set section.key=value`` overrides, validation.

Every key is documented in the README. Validation happens once, here, before any work starts, and every
error names the key, the bad value and what would be accepted.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("baffle", "baffle_local", "fedsgd", "fedavg")
OPTIMIZERS = ("adam", "sgd")
AGGREGATORS = ("mean", "median", "trimmed_mean", "clipped_mean", "multi_krum")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


@dataclass
class RunConfig:
    method: str = "baffle"  # baffle (forward-only, scalar uploads) | baffle_local | fedsgd | fedavg (backprop)
    rounds: int = 3000
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int = 250
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 = torch's default


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = ""  # directory for cifar10/cifar100 (or fashion_mnist idx files)
    image_size: int = 14  # square resize; 0 = native size (use 0 or 32 for CIFAR). 14x14 MNIST: 4x cheaper forwards
    num_clients: int = 10
    partition: str = "iid"  # iid | dirichlet | shard
    alpha: float = 0.5
    shards_per_client: int = 2
    train_subset: int = 0  # 0 = all training samples; else a seeded random subset (for quick runs/tests)
    test_subset: int = 0  # 0 = the whole test set
    eval_train_samples: int = 2000  # training samples the simulator scores for the train_loss metric
    transform: str = "none"  # fixed image transform of the task: none | invert | rotate90 | hflip (baffle.tasks)
    classes: list[int] = field(default_factory=list)  # keep only these labels, relabelled 0..len-1; empty = all


@dataclass
class ModelConfig:
    name: str = "lenet_small"  # lenet (the paper's, global pooling, 26.7k params) | lenet_small | wrn10_2 | mlp
    activation: str = "hardswish"
    norm: str = "group"
    init: str = ""  # checkpoint or state_dict file to start from (fine-tuning)
    trainable: list[str] = field(default_factory=list)  # glob patterns; empty = all parameters
    adapter: str = "none"  # none | lora (low-rank adapters on every conv/linear weight; baffle.adapters)
    lora_rank: int = 4
    prune: float = 0.0  # fixed magnitude-pruning mask (fraction of each weight tensor), kept by the server


@dataclass
class EstimatorConfig:
    K: int = 20  # the fast recipe (every table uses it); at 42k passes K=50-100 did ~1.5 points better (k_sweep)
    sigma: float = 1e-3
    scheme: str = "forward"  # forward (K+1 forwards) | central (twin-point, 2K forwards)
    engine: str = "batched"  # batched | loop
    max_memory_mb: int = 512  # memory budget of the batched engine's perturbation chunks
    baseline: str = "none"  # server-side: none | mean (subtract mean_k dL_k; baffle.shaping)
    shaping: str = "none"  # server-side: none | rank (ES centered-rank fitness shaping; baffle.shaping)
    seed_pool: int = 0  # server-side: reuse a pool of this many directions (a multiple of K), K per round; 0 = fresh
    fuse_clients: bool = True  # simulator: one batched pass over all sampled clients' minibatches (same uploads)


@dataclass
class FederationConfig:
    clients_per_round: float = 1.0  # fraction in (0, 1], or an integer count > 1
    batch_size: int = 8  # per client; ZO noise is dominated by directions, not data: small batches buy more rounds
    local_steps: int = 10  # baffle_local / fedavg: local steps per round
    local_lr: float = 0.01  # baffle_local / fedavg: client learning rate
    aggregator: str = "mean"
    trim_fraction: float = 0.1
    min_clients: int = 1  # quorum: a round with fewer valid uploads is skipped
    onnx_clients: float = 0.0  # clients that run ONNX Runtime + numpy only: fraction in [0, 1] or a count > 1
    onnx_precision: str = "float"  # ONNX clients' arithmetic: float | int8 (activations) | int8_weights
    dropout_rate: float = 0.0  # probability a sampled client fails mid-round (seeded per round and client)
    straggler_delay_s: float = 0.0  # mean simulated response time (exponential); 0 = instant
    timeout_s: float = 0.0  # clients slower than this are dropped; 0 = wait for everyone
    attack: str = "none"  # simulated Byzantine clients: none | scale_neg10 | scale_100 | noise | sign_flip
    attack_fraction: float = 0.0  # fraction of all clients that are hostile (a fixed seeded set)


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 0.01
    momentum: float = 0.9  # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])  # adam
    weight_decay: float = 5e-4
    clip: float = 0.3  # infinity-norm clip of the gradient estimate; 0 disables
    milestones: list[int] = field(default_factory=list)  # rounds at which lr *= gamma
    gamma: float = 0.2
    cosine: bool = True  # cosine decay of lr to 0 over the run (applied on top of milestones)
    warmup: int = 20  # rounds of linear lr warmup from lr/warmup to lr; 0 disables
    ema_decay: float = 0.98  # EMA of weights used for evaluation; 0 disables
    ema_every: int = 1  # rounds between EMA updates


@dataclass
class PrivacyConfig:
    mode: str = "none"  # none | local (clients clip + noise before upload) | central (server, on the sum)
    clip: float = 0.01  # L2 bound C of each client's K-vector (||dL|| ~ sigma * |grad| * sqrt(K))
    noise_multiplier: float = 1.0  # z: Gaussian noise std = z * C per coordinate
    delta: float = 1e-5  # epsilon is reported at this delta


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = cls()
        for section, values in d.items():
            if not hasattr(cfg, section) or not dataclasses.is_dataclass(getattr(cfg, section)):
                raise ConfigError(f"unknown config section [{section}]; valid: {', '.join(cls.sections())}")
            if not isinstance(values, dict):
                raise ConfigError(f"[{section}] must be a table of keys, got {values!r}")
            for key, value in values.items():
                cfg.set(f"{section}.{key}", value)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not UTF-8 text (byte {e.start}): TOML files are UTF-8") from None
        try:
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None

    @classmethod
    def sections(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def set(self, dotted: str, value: Any) -> None:
        """Set ``section.key`` to ``value`` (a typed value, or a string from the command line)."""
        if "." not in dotted:
            raise ConfigError(f"config key {dotted!r} must look like section.key (e.g. estimator.K)")
        section, key = dotted.split(".", 1)
        sub = getattr(self, section, None)
        if sub is None or not dataclasses.is_dataclass(sub):
            raise ConfigError(f"unknown config section {section!r} in {dotted!r}; valid: {', '.join(self.sections())}")
        fields = {f.name: f for f in dataclasses.fields(sub)}
        if key not in fields:
            raise ConfigError(f"unknown config key {dotted!r}; keys of [{section}]: {', '.join(fields)}")
        current = getattr(sub, key)
        setattr(sub, key, _coerce(dotted, value, current))

    def apply_overrides(self, overrides: list[str]) -> None:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} must look like section.key=value")
            k, v = item.split("=", 1)
            self.set(k.strip(), v.strip())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for k, v in values.items():
                lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
        return "\n".join(lines)

    # ---- validation ---------------------------------------------------------------------------
    def validate(self) -> "Config":
        from baffle.data import DATASET_NAMES, PARTITION_SCHEMES
        from baffle.estimator import SCHEMES
        from baffle.models import ACTIVATIONS, MODEL_ALIASES, MODEL_NAMES, NORMS

        r, d, m, e, f, o = self.run, self.data, self.model, self.estimator, self.federation, self.optim
        _check_types_and_finite(self)
        _choice("run.method", r.method, METHODS)
        _positive("run.rounds", r.rounds)
        _nonneg("run.seed", r.seed)
        _positive("run.eval_every", r.eval_every)
        _nonneg("run.checkpoint_every", r.checkpoint_every)
        _nonneg("run.threads", r.threads)
        _choice("data.name", d.name, DATASET_NAMES)
        _nonneg("data.image_size", d.image_size)
        _positive("data.num_clients", d.num_clients)
        _choice("data.partition", d.partition, PARTITION_SCHEMES)
        if d.alpha <= 0:
            raise ConfigError(f"data.alpha must be > 0 (Dirichlet concentration), got {d.alpha}")
        _positive("data.shards_per_client", d.shards_per_client)
        _nonneg("data.train_subset", d.train_subset)
        _nonneg("data.test_subset", d.test_subset)
        _nonneg("data.eval_train_samples", d.eval_train_samples)
        from baffle.data import DATASET_INFO
        from baffle.tasks import TRANSFORMS, check_classes

        _choice("data.transform", d.transform, TRANSFORMS)
        if d.classes:
            try:
                check_classes(d.classes, DATASET_INFO[d.name].num_classes)
            except ValueError as err:
                raise ConfigError(str(err)) from None
        if d.name in ("cifar10", "cifar100") and not d.root:
            raise ConfigError(
                f"data.name={d.name} needs data.root: no CIFAR data ships with baffle; download the python "
                "version of the dataset and pass --set data.root=DIR"
            )
        _choice("model.name", m.name, MODEL_NAMES + tuple(MODEL_ALIASES))
        _choice("model.activation", m.activation, ACTIVATIONS)
        _choice("model.norm", m.norm, NORMS)
        if o.gamma <= 0:
            raise ConfigError(f"optim.gamma must be > 0 (lr multiplier at each milestone), got {o.gamma}")
        if m.init and ("\0" in m.init or not Path(m.init).is_file()):
            raise ConfigError(f"model.init={m.init!r}: no such file")
        from baffle.adapters import ADAPTERS, LORA_PATTERN

        _choice("model.adapter", m.adapter, ADAPTERS)
        _positive("model.lora_rank", m.lora_rank)
        if m.adapter == "lora" and not any("lora_" in pat for pat in m.trainable):
            raise ConfigError(
                f"model.adapter='lora' adds adapter parameters that must be trained: include {LORA_PATTERN!r} in "
                f"model.trainable (now {m.trainable}), e.g. model.trainable = [{LORA_PATTERN!r}, 'classifier.*']"
            )
        _positive("estimator.K", e.K)
        if not e.sigma > 0:
            raise ConfigError(f"estimator.sigma must be > 0, got {e.sigma}")
        _choice("estimator.scheme", e.scheme, SCHEMES)
        _choice("estimator.engine", e.engine, ("batched", "loop"))
        _positive("estimator.max_memory_mb", e.max_memory_mb)
        from baffle.shaping import BASELINES, SHAPINGS

        _choice("estimator.baseline", e.baseline, BASELINES)
        _choice("estimator.shaping", e.shaping, SHAPINGS)
        if (e.baseline, e.shaping) != ("none", "none") and r.method != "baffle":
            raise ConfigError("estimator.baseline/shaping transform the server's aggregated K-vector: they need run.method='baffle'")
        _nonneg("optim.warmup", o.warmup)
        if e.seed_pool and (e.seed_pool < e.K or e.seed_pool % e.K):
            raise ConfigError(f"estimator.seed_pool must be 0 or a multiple of estimator.K={e.K}, got {e.seed_pool}")
        if not isinstance(e.fuse_clients, bool):
            raise ConfigError(f"estimator.fuse_clients must be true or false, got {e.fuse_clients!r}")
        c = f.clients_per_round
        if not (0 < c <= 1 or (c > 1 and float(c).is_integer())):
            raise ConfigError(
                f"federation.clients_per_round must be a fraction in (0, 1] or a whole count > 1, got {c}"
            )
        if c > 1 and c > d.num_clients:
            raise ConfigError(f"federation.clients_per_round={int(c)} exceeds data.num_clients={d.num_clients}")
        _positive("federation.batch_size", f.batch_size)
        _positive("federation.local_steps", f.local_steps)
        if not f.local_lr > 0:
            raise ConfigError(f"federation.local_lr must be > 0, got {f.local_lr}")
        _choice("federation.aggregator", f.aggregator, AGGREGATORS)
        if not 0 <= f.trim_fraction < 0.5:
            raise ConfigError(f"federation.trim_fraction must be in [0, 0.5), got {f.trim_fraction}")
        _positive("federation.min_clients", f.min_clients)
        _validate_faults_and_privacy(self)
        _choice("optim.name", o.name, OPTIMIZERS)
        if not o.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
        if not 0 <= o.momentum < 1:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {o.momentum}")
        if o.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
        if o.clip < 0:
            raise ConfigError(f"optim.clip must be >= 0 (0 disables), got {o.clip}")
        if not 0 <= o.ema_decay < 1:
            raise ConfigError(f"optim.ema_decay must be in [0, 1), got {o.ema_decay}")
        _positive("optim.ema_every", o.ema_every)
        _validate_inference_clients(self)
        if any(not isinstance(x, int) or x < 1 for x in o.milestones):
            raise ConfigError(f"optim.milestones must be positive round numbers, got {o.milestones}")
        return self


def _check_types_and_finite(cfg: "Config") -> None:
    """No NaN or infinity anywhere, and list items of the expected kind: comparisons with NaN are all False,
    so a NaN would slip through every range check below."""
    import math

    for section in cfg.sections():
        sub = getattr(cfg, section)
        default = type(sub)()
        for fld in dataclasses.fields(sub):
            value = getattr(sub, fld.name)
            key = f"{section}.{fld.name}"
            items = value if isinstance(value, list) else [value]
            if any(isinstance(x, float) and not math.isfinite(x) for x in items):
                raise ConfigError(f"{key} must be finite, got {value}")
            kinds = {type(x) for x in getattr(default, fld.name)} if isinstance(value, list) else set()
            if isinstance(value, list) and fld.name == "trainable":
                kinds = {str}
            if kinds:  # lists whose default shows the item kind (an empty default list is checked elsewhere)
                numeric = kinds <= {int, float}
                for x in value:
                    ok = (isinstance(x, (int, float)) and not isinstance(x, bool)) if numeric else isinstance(x, tuple(kinds))
                    if not ok:
                        raise ConfigError(f"{key} items must be {'numbers' if numeric else 'strings'}, got {x!r} in {value}")


def _validate_faults_and_privacy(cfg: "Config") -> None:
    from baffle.attacks import ATTACKS
    from baffle.privacy import MODES

    f, p = cfg.federation, cfg.privacy
    for key, value in (("dropout_rate", f.dropout_rate), ("attack_fraction", f.attack_fraction)):
        if not 0 <= value <= 1:
            raise ConfigError(f"federation.{key} must be in [0, 1], got {value}")
    for key, value in (("straggler_delay_s", f.straggler_delay_s), ("timeout_s", f.timeout_s)):
        if not (value >= 0 and value != float("inf")):
            raise ConfigError(f"federation.{key} must be a finite number of seconds >= 0, got {value}")
    _choice("federation.attack", f.attack, ATTACKS)
    if f.attack != "none" and cfg.run.method != "baffle":
        raise ConfigError(f"federation.attack={f.attack!r} corrupts scalar uploads: it needs run.method='baffle'")
    _choice("privacy.mode", p.mode, MODES)
    if p.mode != "none":
        if cfg.run.method != "baffle":
            raise ConfigError(f"privacy.mode={p.mode!r} privatizes scalar uploads: it needs run.method='baffle'")
        if not (0 < p.clip < float("inf")):
            raise ConfigError(f"privacy.clip must be a finite number > 0, got {p.clip}")
        if not (0 <= p.noise_multiplier < float("inf")):
            raise ConfigError(f"privacy.noise_multiplier must be a finite number >= 0, got {p.noise_multiplier}")
        if not 0 < p.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {p.delta}")
        if p.mode == "central" and f.aggregator != "mean":
            raise ConfigError(
                f"privacy.mode='central' calibrates noise to a clipped sum: it needs federation.aggregator='mean', "
                f"got {f.aggregator!r} (use privacy.mode='local' with a robust aggregator)"
            )


def _validate_inference_clients(cfg: "Config") -> None:
    """ONNX Runtime clients and pruning (docs/inference-clients.md)."""
    m, f = cfg.model, cfg.federation
    if not 0 <= m.prune < 1:
        raise ConfigError(f"model.prune must be a fraction in [0, 1), got {m.prune}")
    n = f.onnx_clients
    if not (0 <= n <= 1 or (n > 1 and float(n).is_integer())):
        raise ConfigError(f"federation.onnx_clients must be a fraction in [0, 1] or a whole count > 1, got {n}")
    if n > 1 and n > cfg.data.num_clients:
        raise ConfigError(f"federation.onnx_clients={int(n)} exceeds data.num_clients={cfg.data.num_clients}")
    _choice("federation.onnx_precision", f.onnx_precision, ("float", "int8", "int8_weights"))
    if (n > 0 or m.prune > 0) and cfg.run.method != "baffle":
        key = "federation.onnx_clients" if n > 0 else "model.prune"
        raise ConfigError(f"{key} is implemented for scalar-upload rounds: it needs run.method='baffle', got {cfg.run.method!r}")
    if n > 0 and cfg.data.name.startswith("cifar"):
        raise ConfigError(
            f"federation.onnx_clients with data.name={cfg.data.name!r}: ONNX clients do not run the CIFAR "
            "augmentation (torch); use mnist, fashion_mnist or synthetic"
        )


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _positive(key: str, value: Any) -> None:
    if not value >= 1:
        raise ConfigError(f"{key} must be a positive integer, got {value}")


def _nonneg(key: str, value: Any) -> None:
    if not value >= 0:
        raise ConfigError(f"{key} must be >= 0, got {value}")


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", list: "a list", bool: "true or false"}


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Convert ``value`` to the type of the field's default, with an error naming the key."""
    typ = type(current)
    if isinstance(value, str) and typ is not str:
        text = value
        if typ is list:
            text = text.strip()
            if not text.startswith("["):
                text = "[" + ",".join(f'"{p.strip()}"' if p.strip() and not _is_number(p) else p for p in text.split(",") if p.strip()) + "]"
            try:
                value = tomllib.loads(f"v = {text}")["v"]
            except tomllib.TOMLDecodeError:
                raise ConfigError(f"{key}: cannot parse {value!r} as a list") from None
        elif typ is bool:
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"{key} must be true or false, got {value!r}")
            value = low in ("true", "1", "yes")
        else:
            try:
                value = float(text) if typ is float else int(float(text)) if _is_int_text(text) else None
            except ValueError:
                value = None
            if value is None:
                raise ConfigError(f"{key} must be {_TYPE_WORDS.get(typ, typ.__name__)}, got {text!r}")
        return value
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if typ is list and isinstance(value, list):
        return list(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {_TYPE_WORDS.get(typ, typ.__name__)}, got {value!r} ({type(value).__name__})")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_int_text(text: str) -> bool:
    return _is_number(text) and float(text).is_integer()


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)
