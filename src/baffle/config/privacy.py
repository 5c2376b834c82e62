"""[privacy]: differential privacy of the scalar uploads (local: each client; central: the server's sum)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from baffle.config.checks import ConfigError, choice
from baffle.config.choices import PRIVACY_MODES, SCALAR_METHODS

if TYPE_CHECKING:
    from baffle.config.core import Config


@dataclass
class PrivacyConfig:
    mode: str = "none"  # none | local (clients clip + noise before upload) | central (server, on the sum)
    clip: float = 0.01  # L2 bound C of each client's upload: K scalars, S x K for baffle_multistep (||dL|| ~ sigma * |grad| * sqrt(S*K))
    noise_multiplier: float = 1.0  # z: Gaussian noise std = z * C per coordinate
    delta: float = 1e-5  # epsilon is reported at this delta


def validate(p: PrivacyConfig, cfg: "Config") -> None:
    choice("privacy.mode", p.mode, PRIVACY_MODES)
    if p.mode == "none":
        return
    if cfg.run.method not in SCALAR_METHODS:
        raise ConfigError(f"privacy.mode={p.mode!r} privatizes scalar uploads: it needs run.method "
                          f"{' or '.join(map(repr, SCALAR_METHODS))}, got {cfg.run.method!r}")
    if not (0 < p.clip < float("inf")):
        raise ConfigError(f"privacy.clip must be a finite number > 0, got {p.clip}")
    if not (0 <= p.noise_multiplier < float("inf")):
        raise ConfigError(f"privacy.noise_multiplier must be a finite number >= 0, got {p.noise_multiplier}")
    if not 0 < p.delta < 1:
        raise ConfigError(f"privacy.delta must be in (0, 1), got {p.delta}")
    if p.mode == "central" and cfg.federation.aggregator != "mean":
        raise ConfigError(
            f"privacy.mode='central' calibrates noise to a clipped sum: it needs federation.aggregator='mean', "
            f"got {cfg.federation.aggregator!r} (use privacy.mode='local' with a robust aggregator)"
        )
