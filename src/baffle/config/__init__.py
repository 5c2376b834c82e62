"""Run configuration: one dataclass per section, each validated by its own module (``baffle.config.run``,
``.data``, ``.model``, ``.estimator``, ``.federation``, ``.optim``, ``.privacy``) against the single list of
valid choices per key in ``baffle.config.choices``. Torch-free, and imports no other baffle module.

Every key is documented in the README; every error names the key, the bad value and what would be accepted.
"""

from baffle.config.checks import ConfigError
from baffle.config.core import Config
from baffle.config.data import DataConfig
from baffle.config.estimator import EstimatorConfig
from baffle.config.federation import FederationConfig
from baffle.config.model import ModelConfig
from baffle.config.optim import OptimConfig
from baffle.config.privacy import PrivacyConfig
from baffle.config.run import RunConfig

__all__ = ["Config", "ConfigError", "DataConfig", "EstimatorConfig", "FederationConfig", "ModelConfig",
           "OptimConfig", "PrivacyConfig", "RunConfig"]
