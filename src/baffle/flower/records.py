"""baffle plans and uploads as Flower records, and what they weigh on the wire.

A plan is a ``Payload``: flat scalars (ConfigRecord-safe: int, float, str, bytes, bool) plus named numpy
arrays. The same payload travels as Message-API records (``ConfigRecord`` "baffle.plan" + ``ArrayRecord``
"baffle.arrays") or, for the SecAgg+ workflow which is legacy-only in flwr 1.42, as a ``FitIns`` (config
dict + ``Parameters`` whose tensor names ride in the config). One encoder, one decoder per side.

An upload is the same ``baffle.protocol.messages.Upload`` as in-process: an ArrayRecord "baffle.upload" holding
one float32[K] array "loss-diffs" and a MetricRecord "baffle.metrics" with "num-examples" and "round".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from baffle.protocol.messages import MessageError, Upload

PLAN_CONFIG = "baffle.plan"
PLAN_ARRAYS = "baffle.arrays"
UPLOAD_ARRAYS = "baffle.upload"
UPLOAD_METRICS = "baffle.metrics"
ARRAY_NAMES_KEY = "array-names"  # legacy FitIns only: names of Parameters.tensors, newline-joined


@dataclass
class Payload:
    config: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # Flower ``Array``s of some of ``arrays``, built once and shared by every message that carries them (the
    # round's weights, to every node): the encoding and Flower's content hash are then paid once per round
    encoded: dict[str, Any] = field(default_factory=dict)


def encode_arrays(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    from flwr.app import Array

    return {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}


def to_records(payload: Payload):
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

    enc = payload.encoded
    arrays = ArrayRecord({k: enc[k] if k in enc else Array(np.ascontiguousarray(v)) for k, v in payload.arrays.items()})
    return RecordDict({PLAN_CONFIG: ConfigRecord(dict(payload.config)), PLAN_ARRAYS: arrays})


def from_records(content) -> Payload:
    if PLAN_CONFIG not in content.config_records:
        raise MessageError(f"message has no {PLAN_CONFIG!r} ConfigRecord; is it a baffle plan?")
    arrays = content.array_records.get(PLAN_ARRAYS)
    return Payload(
        dict(content.config_records[PLAN_CONFIG]),
        {k: v.numpy() for k, v in arrays.items()} if arrays is not None else {},
    )


def to_fitins(payload: Payload):
    from flwr.common import FitIns, ndarrays_to_parameters

    names = list(payload.arrays)
    if any("\n" in n for n in names):
        raise ValueError("array names must not contain newlines")
    config = dict(payload.config)
    config[ARRAY_NAMES_KEY] = "\n".join(names)
    return FitIns(ndarrays_to_parameters([np.ascontiguousarray(payload.arrays[n]) for n in names]), config)


def from_fitins(fitins) -> Payload:
    from flwr.common import parameters_to_ndarrays

    config = dict(fitins.config)
    names_text = config.pop(ARRAY_NAMES_KEY, None)
    if not isinstance(names_text, str):
        raise MessageError(f"FitIns config lacks {ARRAY_NAMES_KEY!r}; is it a baffle plan?")
    names = names_text.split("\n") if names_text else []
    tensors = parameters_to_ndarrays(fitins.parameters)
    if len(names) != len(tensors):
        raise MessageError(f"FitIns names {len(names)} arrays but carries {len(tensors)}")
    return Payload(config, dict(zip(names, tensors)))


def upload_to_records(upload: Upload):
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    return RecordDict(
        {
            UPLOAD_ARRAYS: ArrayRecord({"loss-diffs": Array(np.ascontiguousarray(upload.loss_diffs, dtype=np.float32))}),
            UPLOAD_METRICS: MetricRecord({"num-examples": int(upload.num_samples), "round": int(upload.round)}),
        }
    )


def upload_from_records(content, client_id: int) -> Upload:
    """Decode a reply into an ``Upload``. ``client_id`` comes from the server's own node map, never from
    the reply: a node cannot claim to be another client. Shape/dtype/value checks are left to
    ``ServerStrategy.validate``, the single validation point."""
    arrays = content.array_records.get(UPLOAD_ARRAYS)
    metrics = content.metric_records.get(UPLOAD_METRICS)
    if arrays is None or metrics is None or "loss-diffs" not in arrays:
        raise MessageError(f"reply lacks {UPLOAD_ARRAYS!r}/{UPLOAD_METRICS!r} records")
    try:
        num = metrics["num-examples"]
        rnd = metrics["round"]
    except KeyError as e:
        raise MessageError(f"reply metrics lack {e}") from None
    if not (isinstance(num, int) and isinstance(rnd, int)):
        raise MessageError(f"reply metrics must be ints, got num-examples={num!r}, round={rnd!r}")
    return Upload(client_id=client_id, round=rnd, loss_diffs=arrays["loss-diffs"].numpy(), num_samples=num)


_NBYTES: dict[str, int] = {}  # object id (Flower's SHA-256 of the serialized object) -> its size


def content_nbytes(content) -> int:
    """Bytes of a message's content as Flower ships it: every serialized object of the record tree
    (records, arrays, array chunks). Message metadata (~100 bytes) and gRPC framing are not counted.

    An object's id is the hash of its serialization, so its size is looked up by id: an Array shared by
    many messages (``Payload.encoded``) is serialized once, not once per message."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    total = 0
    for oid, obj in get_all_nested_objects(content).items():
        size = _NBYTES.get(oid)
        if size is None:
            if len(_NBYTES) > 100_000:
                _NBYTES.clear()
            size = _NBYTES[oid] = len(obj.deflate())
        total += size
    return total
