"""One object per training method (``run.method``): its round body and its cost model.

The simulator looks the method up here instead of switching on its name; a new method is a new object.
"""

from __future__ import annotations

from baffle.methods.base import Method
from baffle.methods.fedavg import FedAvg
from baffle.methods.fedsgd import FedSGD
from baffle.methods.local_zo import LocalZO
from baffle.methods.multistep import MultiStepZO
from baffle.methods.scalar import ScalarZO

METHODS: dict[str, Method] = {m.name: m for m in (ScalarZO(), LocalZO(), FedSGD(), FedAvg(), MultiStepZO())}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown run.method {name!r}; valid: {', '.join(METHODS)}") from None


def per_round_costs(cfg, n_params: int, n_state_bytes: int) -> tuple[int, int]:
    """(upload bytes, forward passes) per client per round of ``cfg.run.method`` (the cost model)."""
    return get_method(cfg.run.method).per_round_costs(cfg, n_params, n_state_bytes)


def download_bytes(cfg, n_state_bytes: int) -> int:
    """Server -> client bytes per sampled client per round of ``cfg.run.method`` (the cost model)."""
    return get_method(cfg.run.method).download_bytes(cfg, n_state_bytes)
