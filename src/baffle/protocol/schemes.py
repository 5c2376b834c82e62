"""Finite-difference schemes: how a client turns forward passes into K loss differences.

forward: dL_k = L(W + sigma eps_k) - L(W)                        (K+1 forward passes)
central: dL_k = [L(W + sigma eps_k) - L(W - sigma eps_k)] / 2    (2K forward passes, the twin-point scheme)

Both clients (torch and ONNX) and the cost model read the check and the cost from here; the names are
``baffle.config.choices.SCHEMES``, the one list config validation also checks against.
"""

from __future__ import annotations

from baffle.config.choices import SCHEMES  # the one list of valid choices per key (torch-free)


def check_scheme(scheme: str) -> None:
    """Raise ValueError for a scheme name no client implements."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; valid: {SCHEMES}")


def forward_passes(num_directions: int, scheme: str) -> int:
    """Forward passes of one minibatch a client runs for one estimate."""
    return num_directions + 1 if scheme == "forward" else 2 * num_directions
