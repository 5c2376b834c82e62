"""[federation]: client sampling, batch size, local steps, aggregation, and the simulator's clients
(ONNX clients, dropouts, stragglers, Byzantine attacks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from baffle.config.checks import ConfigError, choice, fraction_or_count, positive
from baffle.config.choices import AGGREGATORS, ATTACKS, LOCAL_OPTIMIZERS, ONNX_PRECISIONS, SCALAR_METHODS
from baffle.config.data import augments

if TYPE_CHECKING:
    from baffle.config.core import Config


@dataclass
class FederationConfig:
    clients_per_round: float = 1.0  # fraction in (0, 1], or an integer count > 1
    batch_size: int = 32  # per client per pass: near convergence the estimate's error is mostly minibatch noise
    # (experiments/estimate_error.py), so 32 samples reach 96.13% where 8 reached 94.82% (default_batch.toml, 3 seeds)
    local_steps: int = 10  # baffle_local / baffle_multistep / fedavg: local steps per round
    local_lr: float = 0.01  # baffle_local / baffle_multistep / fedavg: client learning rate
    local_optimizer: str = "adam"  # baffle_local: adam (the paper's epoch-level mode) | sgd (plain ZO-SGD, FedZO)
    aggregator: str = "mean"
    trim_fraction: float = 0.1
    trust_root_samples: int = 64  # fltrust: size of the server's trusted root batch (drawn from the training set)
    trust_decay: float = 0.999  # fltrust: reputation = average cosine over ~1/(1-decay) rounds (0 = this round only)
    min_clients: int = 1  # quorum: a round with fewer valid uploads is skipped
    onnx_clients: float = 0.0  # clients that run ONNX Runtime + numpy only: fraction in [0, 1] or a count > 1
    onnx_precision: str = "float"  # ONNX clients' arithmetic: float | int8 (activations) | int8_weights
    dropout_rate: float = 0.0  # probability a sampled client fails mid-round (seeded per round and client)
    straggler_delay_s: float = 0.0  # mean simulated response time (exponential); 0 = instant
    timeout_s: float = 0.0  # clients slower than this are dropped; 0 = wait for everyone
    attack: str = "none"  # simulated Byzantine clients: none | scale_neg10 | scale_100 | noise | sign_flip
    attack_fraction: float = 0.0  # fraction of all clients that are hostile (a fixed seeded set)


def validate(f: FederationConfig, cfg: "Config") -> None:
    method, num_clients = cfg.run.method, cfg.data.num_clients
    fraction_or_count("federation.clients_per_round", f.clients_per_round, num_clients, closed_at_zero=False)
    positive("federation.batch_size", f.batch_size)
    positive("federation.local_steps", f.local_steps)
    if not f.local_lr > 0:
        raise ConfigError(f"federation.local_lr must be > 0, got {f.local_lr}")
    choice("federation.local_optimizer", f.local_optimizer, LOCAL_OPTIMIZERS)
    if f.local_optimizer != "adam" and method != "baffle_local":
        raise ConfigError(f"federation.local_optimizer={f.local_optimizer!r} is for run.method='baffle_local', got {method!r}")
    choice("federation.aggregator", f.aggregator, AGGREGATORS)
    if not 0 <= f.trim_fraction < 0.5:
        raise ConfigError(f"federation.trim_fraction must be in [0, 0.5), got {f.trim_fraction}")
    positive("federation.min_clients", f.min_clients)
    positive("federation.trust_root_samples", f.trust_root_samples)
    if not 0 <= f.trust_decay < 1:
        raise ConfigError(f"federation.trust_decay must be in [0, 1), got {f.trust_decay}")
    if f.aggregator == "fltrust" and method != "baffle":
        raise ConfigError(f"federation.aggregator='fltrust' scores scalar uploads: it needs run.method='baffle', got {method!r}")
    # faults and attacks (baffle.faults, baffle.attacks)
    for key, value in (("dropout_rate", f.dropout_rate), ("attack_fraction", f.attack_fraction)):
        if not 0 <= value <= 1:
            raise ConfigError(f"federation.{key} must be in [0, 1], got {value}")
    for key, value in (("straggler_delay_s", f.straggler_delay_s), ("timeout_s", f.timeout_s)):
        if not (value >= 0 and value != float("inf")):
            raise ConfigError(f"federation.{key} must be a finite number of seconds >= 0, got {value}")
    choice("federation.attack", f.attack, ATTACKS)
    if f.attack != "none" and method not in SCALAR_METHODS:
        raise ConfigError(f"federation.attack={f.attack!r} corrupts scalar uploads: it needs run.method "
                          f"{' or '.join(map(repr, SCALAR_METHODS))}, got {method!r}")
    # ONNX Runtime clients (docs/inference-clients.md)
    fraction_or_count("federation.onnx_clients", f.onnx_clients, num_clients, closed_at_zero=True)
    choice("federation.onnx_precision", f.onnx_precision, ONNX_PRECISIONS)
    if f.onnx_clients > 0 and method != "baffle":
        raise ConfigError(f"federation.onnx_clients is implemented for scalar-upload rounds: it needs run.method='baffle', got {method!r}")
    if f.onnx_clients > 0 and augments(cfg.data):
        raise ConfigError(
            f"federation.onnx_clients with data.name={cfg.data.name!r}: ONNX clients do not run the CIFAR "
            "augmentation (torch); set data.augment='none' or use mnist, fashion_mnist or synthetic"
        )
