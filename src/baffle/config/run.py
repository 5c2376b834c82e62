"""[run]: which method, how long, seeds, evaluation and checkpoint cadence, where it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from baffle.config.checks import ConfigError, choice, nonneg, positive
from baffle.config.choices import DEVICES, METHODS

if TYPE_CHECKING:
    from baffle.config.core import Config


@dataclass
class RunConfig:
    method: str = "baffle"  # baffle (forward-only, scalar uploads) | baffle_multistep (S local steps, S x K scalars) | baffle_local | fedsgd | fedavg (backprop)
    rounds: int = 3000
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int = 250
    device: str = "cpu"  # only "cpu" today: no engine runs elsewhere yet, so anything else is refused
    threads: int = 0  # torch intra-op threads; 0 = torch's default


def validate(r: RunConfig, cfg: "Config") -> None:
    choice("run.method", r.method, METHODS)
    positive("run.rounds", r.rounds)
    nonneg("run.seed", r.seed)
    positive("run.eval_every", r.eval_every)
    nonneg("run.checkpoint_every", r.checkpoint_every)
    if r.device not in DEVICES:
        raise ConfigError(
            f"run.device={r.device!r} is not supported: every baffle engine runs on the CPU today; "
            f"choose one of: {', '.join(DEVICES)}"
        )
    nonneg("run.threads", r.threads)
