"""int8 evaluation of perturbed models with ONNX Runtime's static quantization (QDQ format).

The rule this module implements (measured in ``experiments/int8_sigma.py``, see
docs/inference-clients.md): **perturb in float, quantize activations only**. A weight quantized to int8
with a per-tensor step Delta = range/255 cannot represent W + sigma*eps when sigma << Delta: most
perturbed weights round back to the same integer, the finite difference measures rounding, not the
loss's slope, and the estimate decorrelates from the float one. Activations quantized with scales
fixed for the round do not have that problem: the K+1 evaluations share the same quantization grid,
and the perturbation moves many activations across grid points, which averages into a usable slope.

Scales are calibrated once per round on the client's own minibatch at the unperturbed global weights
(MinMax), then frozen for all K+1 evaluations of that round: the loss differences then measure only the
perturbation, never a change of scales. ``quantize_weights=True`` keeps ORT's weight quantization
(per-tensor, static) and exists to demonstrate the failure above.

numpy + onnx + onnxruntime only (no torch): an inference-only client uses it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Mapping

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from baffle.onnx_session import make_session
from baffle.protocol.onnx_names import INPUT_NAME


class _OneBatch(CalibrationDataReader):
    def __init__(self, feeds: dict[str, np.ndarray]):
        self._items = iter([feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_model(model_bytes: bytes, x: np.ndarray, weights: Mapping[str, np.ndarray], quantize_weights: bool = False) -> bytes:
    """QDQ int8 model calibrated on ``x`` at ``weights``; weight inputs stay float unless asked."""
    feeds = {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32), **{k: np.asarray(v, np.float32) for k, v in weights.items()}}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantizer warns through the root logger about non-constant weights
    try:
        with tempfile.TemporaryDirectory(prefix="baffle-q-") as tmp:
            src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
            with open(src, "wb") as f:
                f.write(model_bytes)
            quantize_static(
                src,
                dst,
                _OneBatch(feeds),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
            proto = onnx.load(dst)
    finally:
        root.setLevel(level)
    if not quantize_weights:
        strip_weight_qdq(proto, set(weights))
    return proto.SerializeToString()


def strip_weight_qdq(proto: onnx.ModelProto, weight_names: set[str]) -> int:
    """Remove QuantizeLinear->DequantizeLinear pairs applied to weight inputs; returns pairs removed."""
    graph = proto.graph
    nodes = list(graph.node)
    q_by_output = {n.output[0]: i for i, n in enumerate(nodes) if n.op_type == "QuantizeLinear" and n.input[0] in weight_names}
    drop: set[int] = set()
    rename: dict[str, str] = {}
    for i, node in enumerate(nodes):
        if node.op_type == "DequantizeLinear" and node.input[0] in q_by_output:
            qi = q_by_output[node.input[0]]
            rename[node.output[0]] = nodes[qi].input[0]
            drop |= {i, qi}
    keep = [onnx.NodeProto.FromString(n.SerializeToString()) for i, n in enumerate(nodes) if i not in drop]
    for node in keep:
        for j, name in enumerate(node.input):
            if name in rename:
                node.input[j] = rename[name]
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


def quantized_session(
    model_bytes: bytes, x: np.ndarray, weights: Mapping[str, np.ndarray], quantize_weights: bool = False, threads: int = 1
) -> ort.InferenceSession:
    """This round's int8 session (see the module docstring for why it is rebuilt each round)."""
    return make_session(quantize_model(model_bytes, x, weights, quantize_weights), threads)
