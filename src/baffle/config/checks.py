"""The error type and the small checks every section validator uses (each error names the key)."""

from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


def choice(key: str, value: Any, valid: Iterable[str]) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def positive(key: str, value: Any) -> None:
    if not value >= 1:
        raise ConfigError(f"{key} must be a positive integer, got {value}")


def nonneg(key: str, value: Any) -> None:
    if not value >= 0:
        raise ConfigError(f"{key} must be >= 0, got {value}")


def fraction_or_count(key: str, value: float, num_clients: int, closed_at_zero: bool) -> None:
    """A fraction of the clients ((0, 1], or [0, 1] when ``closed_at_zero``) or a whole count > 1 that fits."""
    low_ok = value >= 0 if closed_at_zero else value > 0
    if not ((low_ok and value <= 1) or (value > 1 and float(value).is_integer())):
        interval = "[0, 1]" if closed_at_zero else "(0, 1]"
        raise ConfigError(f"{key} must be a fraction in {interval} or a whole count > 1, got {value}")
    if value > 1 and value > num_clients:
        raise ConfigError(f"{key}={int(value)} exceeds data.num_clients={num_clients}")
