"""What crosses the wire between server and clients, and its exact byte size.

Scalar mode upload = a 16-byte header (client id, round, sample count, K) + K float32 loss differences.
That is the whole upload: no gradient, no weights, no activations.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np

if TYPE_CHECKING:  # torch only for annotations: inference-only clients (ONNX Runtime + numpy) import this module
    import torch

UPLOAD_HEADER = struct.Struct("<IIII")  # client_id, round, num_samples, K
# What a plan says besides its seeds and weights: round, sigma, minibatch size, scheme + noise kind (a
# LocalPlan adds the run seed, local steps, local lr and optimizer).
PLAN_HEADER_BYTES = 16
LOCAL_PLAN_HEADER_BYTES = 32


def state_bytes(weights: Mapping[str, torch.Tensor] | None) -> int:
    """Bytes of a weights payload (every tensor it holds, raw: the state dict, or its trainable subset)."""
    return 0 if weights is None else sum(t.numel() * t.element_size() for t in weights.values())


def plan_nbytes(num_seeds: int, weights_bytes: int, header: int = PLAN_HEADER_BYTES) -> int:
    """Server -> client bytes of one plan: its header, ``num_seeds`` uint64 direction seeds and the model state
    when it carries it (``weights_bytes``: the tensors that change, plus the 32-byte fingerprint of the frozen
    part when only a subset trains; ``baffle.plan_state``) (the simulator's cost model and ``RoundPlan.nbytes``:
    one formula)."""
    return header + 8 * num_seeds + weights_bytes


class MessageError(ValueError):
    """A message that cannot be decoded or does not fit the round it claims to belong to."""


@dataclass(frozen=True)
class RoundPlan:
    """Server -> client for one FedSGD-style round.

    ``weights`` is None when the client already holds this round's global weights (it can rebuild them).
    Otherwise it holds the state that changes during the run: the whole state dict, or only the trainable
    tensors when a subset trains (``baffle.plan_state``), and then ``frozen_sha256`` fingerprints the frozen
    rest, which the client built itself.
    """

    round: int
    seeds: np.ndarray  # uint64, shape (K,)
    sigma: float
    scheme: str  # "forward" | "central"
    batch_size: int
    weights: Mapping[str, torch.Tensor] | None = None
    noise: str = "v1"  # direction spec (baffle.protocol.noise.KINDS): every party must generate the same kind
    frozen_sha256: bytes | None = None  # SHA-256 of the state a subset plan does not carry (baffle.plan_state)

    @property
    def num_directions(self) -> int:
        return int(len(self.seeds))

    @property
    def nbytes(self) -> int:
        return plan_nbytes(len(self.seeds), state_bytes(self.weights) + len(self.frozen_sha256 or b""))


@dataclass(frozen=True)
class LocalPlan:
    """Server -> client for one epoch-level round: local forward-only training, weights come back (the same
    tensors ``weights`` carries: all of them, or the trainable subset)."""

    round: int
    run_seed: int
    num_directions: int
    sigma: float
    scheme: str
    batch_size: int
    local_steps: int
    lr: float
    weights: Mapping[str, torch.Tensor] = field(default_factory=dict)
    noise: str = "v1"  # direction spec of the private local-step seeds
    optimizer: str = "adam"  # the client's local optimizer: adam | sgd (plain SGD, FedZO)
    frozen_sha256: bytes | None = None  # as RoundPlan's: the fingerprint of the state ``weights`` leaves out

    @property
    def nbytes(self) -> int:
        return plan_nbytes(0, state_bytes(self.weights) + len(self.frozen_sha256 or b""), LOCAL_PLAN_HEADER_BYTES)


@dataclass(frozen=True)
class Upload:
    """Client -> server in scalar mode: K loss differences and the sample count used for weighting."""

    client_id: int
    round: int
    loss_diffs: np.ndarray  # float32, shape (K,)
    num_samples: int

    def to_bytes(self) -> bytes:
        diffs = np.ascontiguousarray(self.loss_diffs, dtype="<f4")
        return UPLOAD_HEADER.pack(self.client_id, self.round, self.num_samples, len(diffs)) + diffs.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, expected_k: int | None = None) -> "Upload":
        """Decode a wire message; anything that is not exactly one well-formed upload is a MessageError.

        Only the framing is checked here; what the values mean (round, sender, finiteness, magnitude) is
        checked by ``ServerStrategy.validate`` like any other upload."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MessageError(f"upload must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < UPLOAD_HEADER.size:
            raise MessageError(f"upload is {len(data)} bytes, shorter than its {UPLOAD_HEADER.size}-byte header")
        client_id, rnd, num_samples, k = UPLOAD_HEADER.unpack_from(data)
        expected = UPLOAD_HEADER.size + 4 * k
        if len(data) != expected:
            raise MessageError(f"upload declares K={k} ({expected} bytes) but is {len(data)} bytes")
        if expected_k is not None and k != expected_k:
            raise MessageError(f"upload carries K={k} loss differences, this round expects {expected_k}")
        diffs = np.frombuffer(data, dtype="<f4", offset=UPLOAD_HEADER.size).astype(np.float32)
        return cls(client_id=client_id, round=rnd, loss_diffs=diffs, num_samples=num_samples)

    @property
    def nbytes(self) -> int:
        return UPLOAD_HEADER.size + 4 * int(np.asarray(self.loss_diffs).size)


@dataclass(frozen=True)
class WeightsUpload:
    """Client -> server in epoch-level mode: the locally trained weights (NOT scalars: the model, or its
    trainable subset when only a subset trains: the plan's tensors, ``baffle.plan_state``)."""

    client_id: int
    round: int
    weights: Mapping[str, torch.Tensor]
    num_samples: int

    @property
    def nbytes(self) -> int:
        return 12 + sum(t.numel() * t.element_size() for t in self.weights.values())
