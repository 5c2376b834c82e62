"""Finite-difference schemes: how a client turns forward passes into K loss differences.

forward: dL_k = L(W + sigma eps_k) - L(W)                        (K+1 forward passes)
central: dL_k = [L(W + sigma eps_k) - L(W - sigma eps_k)] / 2    (2K forward passes, the twin-point scheme)

Both clients (torch and ONNX), the config validation and the cost model read the names and the cost
from here, so a new scheme is added in one place.
"""

from __future__ import annotations

SCHEMES: tuple[str, ...] = ("forward", "central")


def check_scheme(scheme: str) -> None:
    """Raise ValueError for a scheme name no client implements."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; valid: {SCHEMES}")


def forward_passes(num_directions: int, scheme: str) -> int:
    """Forward passes of one minibatch a client runs for one estimate."""
    return num_directions + 1 if scheme == "forward" else 2 * num_directions
