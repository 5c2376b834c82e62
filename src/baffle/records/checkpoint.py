"""Checkpoints that cannot run code, written atomically, verified (integrity and authenticity) on load.

Why this format: ``torch.load(weights_only=False)`` unpickles, and unpickling a file runs whatever the file
asks for. A baffle checkpoint is therefore data only:

* every tensor (and numpy array) lives in a **safetensors** payload: a JSON header and raw little-endian bytes;
* everything else (optimizer hyper-parameters, EMA decay, RNG states, counters, the resolved config) is a
  plain **JSON tree** (schema ``baffle.checkpoint/2``) stored in the safetensors ``__metadata__``. Python
  types JSON lacks are tagged objects: ``{"__tensor__": name}``, ``{"__ndarray__": name, "dtype": ..}``,
  ``{"__tuple__": [..]}``, ``{"__dict__": [[key, value], ..]}`` (non-string keys), ``{"__float__": "nan"}``,
  ``{"__np__": dtype, "v": ..}`` (numpy scalars), so a state round-trips exactly (resume is bit-identical).

File layout::

    b"BAFFLE02" | SHA-256(payload) (32 bytes) | HMAC-SHA256(run key, magic + payload) (32 bytes) | payload

The SHA-256 catches truncation and bit rot for anyone (the message names the file). The HMAC is keyed by
the run's key file ``<run dir>/.baffle-key`` (32 random bytes, created mode 0600 on the first save): a file
altered by someone who cannot read that key, or a checkpoint copied in from another run, is refused on
``--resume``. What it cannot stop: anyone who can read the key (the run's owner, root) can forge a
checkpoint; the key protects against tampering by others, not by the owner. ``--init`` may use a baffle
checkpoint without its key (integrity only, logged): its contents are weights, parsed without code, the same
trust as a safetensors file.

Files are written to a temporary file in the same directory, fsynced, renamed over the old one, the
directory fsynced: a reader sees the old checkpoint or the new one, never a torn file. Checkpoints and keys
are created mode 0600. The old pickled format (``BAFFLE01``) is refused; :func:`baffle.records.legacy.convert_legacy` rewrites one
only when the caller says it trusts the file (``baffle convert-checkpoint --trust-pickle``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from baffle.plan_state import frozen_from_hex

MAGIC = b"BAFFLE02"
LEGACY_MAGIC = b"BAFFLE01"  # pickled payload: refused
SCHEMA = "baffle.checkpoint/2"
KEY_NAME = ".baffle-key"
HEADER = len(MAGIC) + 32 + 32
MAX_TREE_DEPTH = 64
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the safetensors library's own bound

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that is missing, truncated, corrupted, forged or not ours."""


# ---- atomic files ---------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a torn one.

    ``mode`` is the new file's permission (minus the umask); checkpoints and keys use 0600."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
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


# ---- the run key ----------------------------------------------------------------------------------------


def key_path(directory: str | Path) -> Path:
    return Path(directory) / KEY_NAME


def run_key(directory: str | Path, create: bool = False) -> bytes | None:
    """The HMAC key of the run in ``directory`` (None when there is none and ``create`` is False)."""
    path = key_path(directory)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            return None
        key = secrets.token_bytes(32)
        atomic_write_bytes(path, (key.hex() + "\n").encode(), mode=0o600)
        return key
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read the run key {path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise CheckpointError(f"{path} is not a baffle run key (64 hex digits expected)")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable or writable by other users: chmod 600 it (whoever reads it can forge checkpoints)", path)
    return key


# ---- the JSON tree --------------------------------------------------------------------------------------

_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__", "__np__")


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.generic):  # before int/float: np.float64 subclasses float and must stay np.float64
        if obj.dtype.kind not in "biuf":
            raise CheckpointError(f"cannot store the numpy {obj.dtype} scalar at {where} in a checkpoint")
        return {"__np__": obj.dtype.str, "v": _encode(obj.item(), tensors, where)}
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_complex() or obj.is_quantized:
            raise CheckpointError(f"cannot store the {obj.layout} {obj.dtype} tensor at {where} in a checkpoint")
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()  # a copy: safetensors refuses shared storage
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise CheckpointError(f"cannot store the {obj.dtype} array at {where} in a checkpoint")
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": name, "dtype": obj.dtype.str}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x, tensors, f"{where}[{i}]") for i, x in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(x, tensors, f"{where}[{i}]") for i, x in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}.{k}")] for k, v in obj.items()]}
    raise CheckpointError(f"cannot store a {type(obj).__name__} (at {where}) in a checkpoint: tensors, arrays and plain data only")


class _Bad(ValueError):
    pass


def _decode(node: Any, tensors: dict[str, torch.Tensor], depth: int = 0) -> Any:
    if depth > MAX_TREE_DEPTH:
        raise _Bad(f"nested deeper than {MAX_TREE_DEPTH} levels")
    if node is None or isinstance(node, (bool, str, int, float)):
        return node
    if isinstance(node, list):
        return [_decode(x, tensors, depth + 1) for x in node]
    if not isinstance(node, dict):
        raise _Bad(f"unexpected {type(node).__name__}")
    tags = [k for k in node if k.startswith("__")]
    if not tags:
        return {k: _decode(v, tensors, depth + 1) for k, v in node.items()}
    tag = tags[0]
    if tag not in _TAGS:
        raise _Bad(f"unknown tag {tag!r}")
    arg = node[tag]
    if tag in ("__tensor__", "__ndarray__"):
        if not isinstance(arg, str) or arg not in tensors:
            raise _Bad(f"{tag} refers to a missing tensor {arg!r}")
        t = tensors[arg]
        if tag == "__tensor__":
            return t
        dtype = np.dtype(_checked_dtype(node.get("dtype")))
        return t.numpy().astype(dtype, copy=True) if t.numel() else np.zeros(tuple(t.shape), dtype=dtype)
    if tag == "__tuple__":
        if not isinstance(arg, list):
            raise _Bad("__tuple__ must hold a list")
        return tuple(_decode(x, tensors, depth + 1) for x in arg)
    if tag == "__dict__":
        if not isinstance(arg, list) or not all(isinstance(p, list) and len(p) == 2 for p in arg):
            raise _Bad("__dict__ must hold [key, value] pairs")
        out = {}
        for k, v in arg:
            key = _decode(k, tensors, depth + 1)
            if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
                raise _Bad(f"unhashable dict key {type(key).__name__}")
            out[key] = _decode(v, tensors, depth + 1)
        return out
    if tag == "__float__":
        if arg not in ("nan", "inf", "-inf"):
            raise _Bad(f"__float__ must be nan, inf or -inf, got {arg!r}")
        return float(arg)
    # __np__: a numpy scalar
    value = _decode(node.get("v"), tensors, depth + 1)
    if not isinstance(value, (bool, int, float)):
        raise _Bad("__np__ needs a number")
    with np.errstate(over="raise", invalid="raise"):
        try:
            return np.dtype(_checked_dtype(arg)).type(value)
        except (OverflowError, FloatingPointError) as e:
            raise _Bad(f"numpy scalar {value!r} does not fit {arg}: {e}") from None


def _checked_dtype(text: Any) -> str:
    """Only plain numeric dtypes (never object arrays, which numpy would unpickle)."""
    if not isinstance(text, str) or len(text) > 8:
        raise _Bad(f"bad dtype {text!r}")
    try:
        dt = np.dtype(text)
    except TypeError:
        raise _Bad(f"bad dtype {text!r}") from None
    if dt.kind not in "biuf":
        raise _Bad(f"dtype {text!r} is not numeric")
    return text


def _reject_constant(name: str) -> Any:
    raise _Bad(f"non-standard JSON constant {name}")


def _parse_json(text: str | bytes) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


# ---- safetensors payloads -------------------------------------------------------------------------------


def _safetensors_header(data: bytes, what: str) -> dict:
    """The JSON header of a safetensors blob, bounds-checked before anything else reads it."""
    if len(data) < 8:
        raise CheckpointError(f"{what} is truncated (no safetensors header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(MAX_SAFETENSORS_HEADER, len(data) - 8) or n < 2:
        raise CheckpointError(f"{what} has a bogus safetensors header length ({n} bytes in a {len(data)}-byte file)")
    try:
        header = _parse_json(data[8 : 8 + n])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{what} has an unreadable safetensors header: {_one_line(e)}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{what} has a safetensors header that is not a JSON object")
    return header


def _safetensors_tensors(data: bytes, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as st_load

    _safetensors_header(data, what)
    try:
        return st_load(data)
    except Exception as e:  # SafetensorError and friends: the library validates offsets, dtypes and sizes
        raise CheckpointError(f"{what} is not a valid safetensors file: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def dumps(state: Mapping[str, Any]) -> bytes:
    """The payload (a safetensors blob with the JSON tree in its metadata) of ``state``."""
    from safetensors.torch import save as st_save

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(dict(state), tensors, "state")
    meta = {"format": "baffle.checkpoint", "schema": SCHEMA, "tree": json.dumps(tree, allow_nan=False, separators=(",", ":"))}
    return st_save(tensors, metadata=meta)


def loads(payload: bytes, what: str = "checkpoint") -> dict[str, Any]:
    """Inverse of :func:`dumps`; any malformed input raises CheckpointError naming ``what``."""
    header = _safetensors_header(payload, what)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != "baffle.checkpoint":
        raise CheckpointError(f"{what} is a safetensors file but not a baffle checkpoint")
    if meta.get("schema") != SCHEMA:
        raise CheckpointError(f"{what} has checkpoint schema {meta.get('schema')!r}; this baffle reads {SCHEMA!r}")
    tensors = _safetensors_tensors(payload, what)
    try:
        tree = _parse_json(meta.get("tree", ""))
        state = _decode(tree, tensors)
    except (ValueError, RecursionError, TypeError) as e:
        raise CheckpointError(f"{what} has a malformed state tree: {_one_line(e)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{what} holds a {type(state).__name__}, expected a dict")
    return state


# ---- checkpoints ----------------------------------------------------------------------------------------


def save(path: str | Path, state: Mapping[str, Any], key: bytes | None = None) -> None:
    """Write ``state`` (a nested dict of tensors, arrays, scalars, lists, tuples, dicts) to ``path``.

    ``key`` defaults to the run key beside ``path`` (created on the first save)."""
    path = Path(path)
    key = key if key is not None else run_key(path.parent, create=True)
    payload = dumps(state)
    mac = hmac.new(key, MAGIC + payload, hashlib.sha256).digest()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + mac + payload, mode=0o600)


def _read(path: Path) -> bytes:
    try:
        if path.is_dir():
            raise CheckpointError(f"{path} is a directory, not a checkpoint file")
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None


def _verified_payload(path: Path, data: bytes, key: bytes | None, authenticate: bool) -> bytes:
    if data[: len(LEGACY_MAGIC)] == LEGACY_MAGIC:
        raise CheckpointError(
            f"{path} is an old pickled baffle checkpoint (BAFFLE01): loading it could run code, so it is refused; "
            f"if you wrote it yourself, convert it once with `baffle convert-checkpoint --trust-pickle {path}`"
        )
    if len(data) < HEADER or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not a baffle checkpoint (bad header; truncated or foreign file)")
    digest, mac, payload = data[8:40], data[40:72], data[72:]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path} is corrupted or truncated: its SHA-256 does not match (refusing to load it)")
    if authenticate:
        key = key if key is not None else run_key(path.parent)
        if key is None:
            raise CheckpointError(
                f"{path} cannot be authenticated: no run key {key_path(path.parent)} (copy the run directory with its "
                "hidden files; to start a new run from these weights use --init)"
            )
        if not hmac.compare_digest(hmac.new(key, MAGIC + payload, hashlib.sha256).digest(), mac):
            raise CheckpointError(
                f"{path} fails its HMAC check: it was not written by the run that owns {key_path(path.parent)} "
                "(altered, or copied in from another run); refusing to load it"
            )
    return payload


def load(path: str | Path, key: bytes | None = None, authenticate: bool = True) -> dict[str, Any]:
    """The state saved at ``path``, after checking its SHA-256 and (by default) its HMAC with the run key."""
    path = Path(path)
    payload = _verified_payload(path, _read(path), key, authenticate)
    return loads(payload, str(path))


def is_authenticated(path: str | Path) -> bool:
    """Whether a run key sits beside ``path`` (what load_model_weights checks the HMAC with)."""
    return key_path(Path(path).parent).exists()


# ---- weights for model.init -----------------------------------------------------------------------------


def _state_dict_or_error(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a non-empty state_dict (parameter name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state_dict: entry {bad[0]!r} is not a named tensor")
    return dict(obj)


def load_model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights for ``model.init``: a safetensors file, a baffle checkpoint (its EMA weights if any, else the
    model) or a plain ``torch.save(state_dict)`` file (read with ``weights_only=True``). Anything else is
    refused with a CheckpointError naming the file; nothing in any of them can run code (:func:`load_init_weights`)."""
    return load_init_weights(path)[0]


def load_init_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], bytes | None]:
    """:func:`load_model_weights` and, for a checkpoint that stores only a trainable subset, the SHA-256 of the
    frozen rest it was trained on (``plan_state.frozen_sha256``; None for whole-model files): the caller loads
    the subset into a freshly built model only if that model's frozen part has this fingerprint."""
    path = Path(path)
    data = _read(path)
    head = data[:8]
    if head in (MAGIC, LEGACY_MAGIC):
        keyed = is_authenticated(path)
        if not keyed:
            log.warning("%s has no run key beside it: its integrity is checked, its origin cannot be", path)
        payload = _verified_payload(path, data, None, authenticate=keyed)
        state = loads(payload, str(path))
        server = state.get("server")
        if not isinstance(server, dict) or "model" not in server:
            raise CheckpointError(f"{path} is a baffle checkpoint without server weights")
        model = _state_dict_or_error(server["model"], path)
        ema = server.get("ema")  # the EMA shadow when there is one (the evaluated weights), else the model
        weights = _state_dict_or_error(ema.get("shadow"), path) if isinstance(ema, dict) else model
        frozen = server.get("frozen_sha256")
        if frozen is None:
            return weights, None
        # the trained subset (a shadow written before it was kept as one holds the frozen rest too, an ulp off)
        weights = {k: v for k, v in weights.items() if k in model}
        if (digest := frozen_from_hex(frozen)) is None:
            raise CheckpointError(f"{path} has a malformed frozen_sha256 (64 hex digits expected)")
        return weights, digest
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip format, or its legacy pickle format
        import io
        import warnings

        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: the refusal is our one line
                warnings.simplefilter("ignore")
                obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - the restricted unpickler refuses with many types; report one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"{path} is not a plain torch state_dict that loads with weights_only=True ({_one_line(first)})"
            ) from None
        return _state_dict_or_error(obj, path), None
    if len(data) >= 9 and data[8:9] == b"{":
        header = _safetensors_header(data, str(path))
        if isinstance(header.get("__metadata__"), dict) and header["__metadata__"].get("format") == "baffle.checkpoint":
            raise CheckpointError(f"{path} is a bare baffle checkpoint payload without its integrity header; refusing it")
        return _state_dict_or_error(_safetensors_tensors(data, str(path)), path), None
    raise CheckpointError(
        f"{path} is not a weights file baffle can read (expected safetensors, a baffle checkpoint or a torch state_dict)"
    )


def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """A state_dict as a safetensors file (the portable, code-free way to share ``--init`` weights)."""
    from safetensors.torch import save as st_save

    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(path, st_save(tensors, metadata={"format": "pt"}))
