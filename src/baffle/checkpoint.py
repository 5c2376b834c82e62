"""Crash-safe checkpoints: written atomically, verified on load.

Layout: 8-byte magic, 32-byte SHA-256 of the payload, payload (torch.save bytes). Written to a temporary
file in the same directory, fsynced, renamed over the old one, directory fsynced: a reader sees either the
old checkpoint or the new one, never a torn file. A truncated or altered file fails its digest and is
refused with a clear error instead of being loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

MAGIC = b"BAFFLE01"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupted or not ours."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old file and no debris
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temporary files left by writers that were killed mid-write (``.NAME.tmp-PID``).

    Call it only when this process is the directory's single writer (resuming a run): the files are
    half-written and nothing will ever rename them."""
    stale = [p for p in Path(directory).glob(".*.tmp-*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    if len(data) < len(MAGIC) + 32 or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not a baffle checkpoint (bad header; truncated or foreign file)")
    digest, payload = data[len(MAGIC) : len(MAGIC) + 32], data[len(MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path} is corrupted or truncated: its SHA-256 does not match (refusing to load it)")
    return torch.load(io.BytesIO(payload), weights_only=False)


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights for ``model.init``: a baffle checkpoint (its EMA weights if any, else the model) or a
    plain ``torch.save(state_dict)`` file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    if head == MAGIC:
        state = load(path)
        server = state["server"]
        return server["ema"]["shadow"] if server.get("ema") else server["model"]
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a state_dict")
    return obj
