"""Typed values from TOML and from the command line: coercion to a field's type, and TOML output."""

from __future__ import annotations

import tomllib
from typing import Any

from baffle.config.checks import ConfigError

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", list: "a list", bool: "true or false"}


def coerce(key: str, value: Any, current: Any) -> Any:
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


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)
