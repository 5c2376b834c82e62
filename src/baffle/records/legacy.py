"""Converting an old pickled checkpoint (BAFFLE01) to the current format: the one place baffle parses a
pickle, and only under an explicit ``--trust-pickle`` (``baffle convert-checkpoint``)."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import torch

from baffle.records.checkpoint import LEGACY_MAGIC, CheckpointError, _one_line, _read, save


def convert_legacy(old: str | Path, new: str | Path | None = None, *, trust_pickle: bool = False) -> Path:
    """Rewrite an old pickled checkpoint (BAFFLE01) in this format; ``new`` defaults to ``old`` (replaced).

    Refuses unless ``trust_pickle``: the old payload is a pickle. It is read with torch's restricted
    unpickler (``weights_only=True``), which only builds tensors and plain containers, but a pickle parser is
    still more attack surface than this format has; convert only files you wrote yourself."""
    old = Path(old)
    new = Path(new) if new is not None else old
    if not trust_pickle:
        raise CheckpointError(f"converting {old} parses a pickle; pass --trust-pickle if you wrote the file yourself")
    data = _read(old)
    if data[:8] != LEGACY_MAGIC or len(data) < 40:
        raise CheckpointError(f"{old} is not an old (BAFFLE01) baffle checkpoint")
    digest, payload = data[8:40], data[40:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{old} is corrupted or truncated: its SHA-256 does not match (refusing to convert it)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the restricted unpickler refuses, one line
        raise CheckpointError(f"{old}: torch's restricted unpickler refused it ({_one_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{old} holds a {type(state).__name__}, expected a dict")
    save(new, state)
    return new
