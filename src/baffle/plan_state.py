"""What a round's plan carries of the model: the state that can change, and a fingerprint of the rest.

When only a subset of the model trains (``model.trainable``, e.g. the 770-parameter head of the 22.6M-parameter
MiniLM, or ``*lora_*`` adapters), the rest of the state never changes during a run: the server's optimizer steps
only the trainable parameters, ``ServerStrategy.apply_weights`` copies only the tensors the uploads carry, and no
model of baffle has a persistent buffer that a forward pass updates (BatchNorm in ``models.py`` keeps no running
statistics, EfficientNet's frozen statistics are non-persistent buffers, BERT has none). Every client builds that
frozen part itself, from the same config and the same pinned weights as the server (``sim.factory.build_model_for``),
so a plan ships only :func:`plan_names`: the trainable parameters plus every persistent buffer (none today; they are
kept because a buffer is exactly what a train-mode forward of a future model could mutate). With no subset
configured, the plan names are the whole state dict and nothing differs from shipping the model.

Safety. A client that loads a plan checks that it carries exactly the plan names with the model's shapes and
dtypes (:func:`load_plan_state`; the first offending tensor is named in a one-line ``MessageError``), so it never
trains on stale weights. A client whose frozen part differs from the server's (another package version, a
different ``model.init`` file) is caught by :func:`frozen_sha256`: a SHA-256 of the frozen part that every plan
carrying weights brings along (32 bytes, counted in the plan's size), compared with the client's own. Sent per
plan rather than once because a Flower node keeps no state between processes in a deployment (each message may
start a new ClientApp that rebuilds its model), and 32 bytes are ~1% of MiniLM's head plan. Hashing MiniLM's
90 MB frozen part takes ~0.06 s (SHA-256, measured on the 2-core reference host), so each side hashes it once
per model object and caches the digest, keyed by the frozen tensors' storage and version counters: any in-place
write to a frozen tensor bumps its version and forces a fresh hash.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Mapping, Sequence

import torch

from baffle.protocol.layout import select_names
from baffle.protocol.messages import MessageError

FROZEN_SHA256_BYTES = 32  # what a weight-carrying plan adds when part of the model is frozen

_FROZEN_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, bytes]]" = weakref.WeakKeyDictionary()


def plan_names(model: torch.nn.Module, trainable: Sequence[str] | None) -> tuple[str, ...]:
    """The state-dict entries a plan carries, in state-dict order: all of them when ``trainable`` is empty (the
    full model trains), else the trainable parameters (``protocol.layout.select_names``: the same rule as the
    perturbed layout) and every persistent buffer."""
    state = model.state_dict()
    if not trainable:
        return tuple(state)
    params = [n for n, _ in model.named_parameters()]
    chosen = set(select_names(params, trainable))
    param_set = set(params)
    return tuple(k for k in state if k in chosen or k not in param_set)


def plan_state(model: torch.nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Detached copies of the plan's tensors (what the server sends; the model may step afterwards)."""
    state = model.state_dict()
    return {k: state[k].detach().clone() for k in names}


def tensor_nbytes(model: torch.nn.Module, names: Sequence[str]) -> int:
    """Raw bytes of the plan's tensors (what a weights upload carries back)."""
    state = model.state_dict()
    return sum(state[k].numel() * state[k].element_size() for k in names)


def has_frozen_part(model: torch.nn.Module, names: Sequence[str]) -> bool:
    return len(names) < len(model.state_dict())


def plan_nbytes_of(model: torch.nn.Module, names: Sequence[str]) -> int:
    """Bytes of the model state one weight-carrying plan ships: its tensors and, when part of the model is
    frozen, the 32-byte fingerprint of that part. Equal to the whole state's bytes when the full model trains."""
    return tensor_nbytes(model, names) + (FROZEN_SHA256_BYTES if has_frozen_part(model, names) else 0)


def _frozen_items(model: torch.nn.Module, names: Sequence[str]) -> list[tuple[str, torch.Tensor]]:
    keep = set(names)
    return [(k, v) for k, v in model.state_dict().items() if k not in keep]


def frozen_sha256(model: torch.nn.Module, names: Sequence[str]) -> bytes | None:
    """SHA-256 over the names, dtypes, shapes and bytes of the state entries a plan does NOT carry, in order;
    None when it carries all of them. Cached per model (see the module docstring for why that is safe)."""
    items = _frozen_items(model, names)
    if not items:
        return None
    key = tuple((k, v.data_ptr(), v._version) for k, v in items)
    hit = _FROZEN_CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    digest = state_sha256(dict(items))
    _FROZEN_CACHE[model] = (key, digest)
    return digest


def state_sha256(state: Mapping[str, torch.Tensor]) -> bytes:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes, in order (``flower.server_core.weights_digest``)."""
    h = hashlib.sha256()
    for k, v in state.items():
        t = v.detach().contiguous().cpu()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.digest()


def replica_digest(model: torch.nn.Module, names: Sequence[str]) -> bytes:
    """What a Flower replay / state plan says the node's replica must reach: ``state_sha256`` of the plan's
    tensors, combined with the cached fingerprint of the frozen rest when a subset trains. With the full model
    training this is ``state_sha256`` of the whole state, as before; with a subset neither side re-hashes the
    frozen part (90 MB for MiniLM) per round, yet a replica whose frozen part differs still fails the comparison."""
    state = model.state_dict()
    digest = state_sha256({k: state[k] for k in names})
    frozen = frozen_sha256(model, names)
    return digest if frozen is None else hashlib.sha256(digest + frozen).digest()


def check_plan_state(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], names: Sequence[str]) -> None:
    """Refuse a plan state that is not exactly ``names`` with the model's shapes and dtypes (``MessageError``
    naming the first offending tensor): a missing trainable tensor would leave stale weights in the model."""
    own = model.state_dict()
    for k in names:
        if k not in weights:
            raise MessageError(f"plan lacks tensor {k!r} (it carries {len(weights)} of the {len(names)} this client trains)")
    expected = set(names)
    for k in weights:
        if k not in expected:
            where = "is frozen on this client (model.trainable differs?)" if k in own else "is not in this client's model"
            raise MessageError(f"plan carries unexpected tensor {k!r}: it {where}")
    for k in names:
        src, dst = weights[k], own[k]
        if tuple(src.shape) != tuple(dst.shape):
            raise MessageError(f"plan tensor {k!r} has shape {tuple(src.shape)}, this client's model has {tuple(dst.shape)}")
        if src.dtype != dst.dtype:
            raise MessageError(f"plan tensor {k!r} has dtype {src.dtype}, this client's model has {dst.dtype}")


def frozen_from_hex(value: object) -> bytes | None:
    """A checkpoint's ``frozen_sha256`` (64 lower-case hex digits) as the 32-byte digest; None when malformed."""
    if isinstance(value, str) and len(value) == 2 * FROZEN_SHA256_BYTES and set(value) <= set("0123456789abcdef"):
        return bytes.fromhex(value)
    return None


def frozen_mismatch(model: torch.nn.Module, names: Sequence[str], expected: bytes | None) -> str | None:
    """Why ``model``'s frozen part (everything but ``names``) is not the one ``expected`` fingerprints, worded to
    follow what carried the fingerprint ("plan ...", "checkpoint ..."); None when it is (``expected`` None: no
    frozen part expected). The one rule for plans, checkpoints and ``model.init`` files."""
    own = frozen_sha256(model, names)
    if expected is None:
        return None if own is None else "carries no fingerprint of the frozen weights, but this model has a frozen part"
    if own is None:
        return "was made for a model with a frozen part, but this run trains every tensor (model.trainable differs)"
    if own != bytes(expected):
        return ("was made for other frozen weights than this model's (SHA-256 mismatch): same model.name, model.init, "
                "pretrained package and model.trainable on both sides?")
    return None


def check_frozen(model: torch.nn.Module, names: Sequence[str], expected: bytes | None) -> None:
    """Refuse to train on a plan whose fingerprint of the frozen part is not this model's (:func:`frozen_mismatch`)."""
    if (why := frozen_mismatch(model, names, expected)) is not None:
        raise MessageError(f"plan {why}")


def load_plan_state(
    model: torch.nn.Module, weights: Mapping[str, torch.Tensor], names: Sequence[str], frozen: bytes | None = None,
    check_fingerprint: bool = True,
) -> None:
    """Check a plan's tensors (and, with ``check_fingerprint``, the frozen part against ``frozen``), then copy
    them into ``model``; the frozen part stays as the client built it."""
    check_plan_state(model, weights, names)
    if check_fingerprint:
        check_frozen(model, names, frozen)
    own = model.state_dict()
    with torch.no_grad():
        for k in names:
            own[k].copy_(weights[k])
