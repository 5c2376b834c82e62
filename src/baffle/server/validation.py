"""The single point where client uploads enter aggregation: every check runs before anything touches the model.

An upload is rejected with one of ``REJECT_CODES`` (the keys of the per-reason counters in metrics.jsonl)
and a reason a person can read; the round goes on with the valid ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from baffle.protocol.messages import MessageError, Upload

log = logging.getLogger("baffle")

# Loss differences are O(sigma * |grad| * sqrt(n)); anything this large is a broken or hostile client.
MAX_ABS_LOSS_DIFF = 1e4

# Rejection codes: the per-reason counters in metrics.jsonl use these keys.
REJECT_CODES = (
    "malformed",  # not an Upload / undecodable bytes
    "bad_client_id",
    "unknown_sender",
    "duplicate",
    "bad_round",  # round id of the wrong type
    "stale_round",
    "future_round",
    "wrong_type",  # loss_diffs not a numpy array
    "wrong_dtype",
    "wrong_length",
    "non_finite",
    "magnitude",
    "bad_sample_count",
)


@dataclass
class Rejection:
    client_id: int
    reason: str
    code: str = "malformed"  # one of REJECT_CODES


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def validate_uploads(
    uploads: Sequence[object], round_idx: int, K: int, expected: set[int] | None = None, max_samples: int | None = None
) -> tuple[list[Upload], list[Rejection]]:
    """Split uploads into the valid ones (in order) and rejections; duplicates after the first are rejected."""
    ok: list[Upload] = []
    rejected: list[Rejection] = []
    seen: set[int] = set()
    for u in uploads:
        problem = upload_check(u, round_idx, K, expected, seen, max_samples=max_samples)
        if problem:
            code, reason = problem
            cid = getattr(u, "client_id", -1)
            log.warning("round %d: rejected upload from client %r [%s]: %s", round_idx, cid, code, reason)
            rejected.append(Rejection(int(cid) if _is_int(cid) else -1, reason, code))
        else:
            seen.add(u.client_id)  # type: ignore[attr-defined]
            ok.append(u)  # type: ignore[arg-type]
    return ok, rejected


def decode_uploads(blobs: Sequence[bytes], round_idx: int) -> tuple[list[Upload], list[Rejection]]:
    """Decode wire uploads; undecodable ones are rejected as "malformed" (a wrong K is caught by validation)."""
    decoded: list[Upload] = []
    rejected: list[Rejection] = []
    for blob in blobs:
        try:
            decoded.append(Upload.from_bytes(blob))
        except MessageError as e:
            log.warning("round %d: rejected undecodable upload [malformed]: %s", round_idx, e)
            rejected.append(Rejection(-1, str(e), "malformed"))
    return decoded, rejected


def upload_problem(
    u: object, round_idx: int, K: int, expected: set[int] | None, seen: set[int], max_samples: int | None = None
) -> str | None:
    """Why an upload must be rejected, or None. Checked before anything touches the model."""
    problem = upload_check(u, round_idx, K, expected, seen, max_samples)
    return problem[1] if problem else None


def upload_check(
    u: object, round_idx: int, K: int, expected: set[int] | None, seen: set[int], max_samples: int | None = None
) -> tuple[str, str] | None:
    """(code, human-readable reason) for a bad upload, or None; codes are REJECT_CODES.

    ``max_samples`` (the round's batch size) bounds the claimed sample count: the count weights the mean,
    so an unbounded claim would let one client outvote all the others.
    """
    if not isinstance(u, Upload):
        return "malformed", f"not an Upload message ({type(u).__name__})"
    if not _is_int(u.client_id) or u.client_id < 0:
        return "bad_client_id", f"invalid client id {u.client_id!r}"
    if expected is not None and u.client_id not in expected:
        return "unknown_sender", f"unknown or unsampled sender {u.client_id}"
    if u.client_id in seen:
        return "duplicate", f"duplicate upload from client {u.client_id}"
    if not _is_int(u.round):
        return "bad_round", f"round id {u.round!r} is not an integer"
    if u.round != round_idx:
        code = "stale_round" if u.round < round_idx else "future_round"
        return code, f"{code.split('_')[0]} round id {u.round} (current round {round_idx})"
    arr = u.loss_diffs
    if not isinstance(arr, np.ndarray):
        return "wrong_type", f"loss_diffs is a {type(arr).__name__}, not a numpy array"
    if arr.dtype != np.float32:
        return "wrong_dtype", f"loss_diffs dtype {arr.dtype}, expected float32"
    if arr.shape != (K,):
        return "wrong_length", f"loss_diffs has shape {arr.shape}, expected ({K},)"
    if not np.isfinite(arr).all():
        return "non_finite", "loss_diffs contains NaN or inf"
    if np.abs(arr).max(initial=0.0) > MAX_ABS_LOSS_DIFF:
        return "magnitude", f"loss_diffs magnitude {float(np.abs(arr).max()):.3g} exceeds {MAX_ABS_LOSS_DIFF:g}"
    if not _is_int(u.num_samples) or u.num_samples < 1 or (max_samples is not None and u.num_samples > max_samples):
        bound = f" (round batch size {max_samples})" if max_samples is not None else ""
        return "bad_sample_count", f"invalid sample count {u.num_samples!r}{bound}"
    return None
