"""``Config``: the seven sections, TOML files, ``--set section.key=value`` overrides, validation.

Validation happens once, before any work starts: each section's own module checks its keys (and the few
rules that tie it to another section), against the one list of choices in ``baffle.config.choices``. No
module here imports a feature module, so anything in baffle can import the config.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from baffle.config import data, estimator, federation, model, optim, privacy, run
from baffle.config.checks import ConfigError
from baffle.config.data import DataConfig
from baffle.config.estimator import EstimatorConfig
from baffle.config.federation import FederationConfig
from baffle.config.model import ModelConfig
from baffle.config.optim import OptimConfig
from baffle.config.privacy import PrivacyConfig
from baffle.config.run import RunConfig
from baffle.config.values import coerce, toml_value

# section name -> the module that validates it, in validation order
VALIDATORS = {"run": run, "data": data, "model": model, "estimator": estimator, "federation": federation,
              "optim": optim, "privacy": privacy}


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

    @classmethod
    def keys(cls) -> Iterator[str]:
        """Every ``section.key``, in declaration order (what ``--set`` and the Flower app accept)."""
        for section in dataclasses.fields(cls):
            for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
                yield f"{section.name}.{f.name}"

    def get(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return getattr(getattr(self, section), key)

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
        setattr(sub, key, coerce(dotted, value, current))

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
                lines.append(f"{k} = {toml_value(v)}")
            lines.append("")
        return "\n".join(lines)

    # ---- validation ---------------------------------------------------------------------------
    def validate(self) -> "Config":
        _check_types_and_finite(self)
        for section, module in VALIDATORS.items():
            module.validate(getattr(self, section), self)
        return self


def _check_types_and_finite(cfg: Config) -> None:
    """No NaN or infinity anywhere, and list items of the expected kind: comparisons with NaN are all False,
    so a NaN would slip through every range check."""
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
