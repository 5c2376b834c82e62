"""Server side: export the global model to ONNX once, with its weights as graph inputs.

Why weights as inputs (measured in ``benchmarks/onnx_export.py``, numbers in docs/inference-clients.md):
a BAFFLE client evaluates K+1 different weight vectors per round, so a graph with baked-in weights would
have to be rebuilt (or re-exported and re-loaded into a new ONNX Runtime session) for every perturbation.
With the weights as inputs the graph (a few KB) is exported and loaded once per federation; each round
ships only the 4n weight bytes, and each perturbed evaluation is one ``session.run`` with other arrays.

The exported model carries metadata an inference-only client needs to rebuild the flat-vector layout of
:func:`baffle.estimator.select_parameters` without torch: the parameter names in ``named_parameters``
order (``baffle.parameters``), the remaining state names (``baffle.buffers``) and the noise spec.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import torch

from baffle.protocol.noise import NOISE_SPEC
from baffle.protocol.onnx_names import INPUT_NAME, META_BUFFERS, META_NOISE, META_PARAMETERS, OUTPUT_NAME

OPSET = 17


def export_onnx(
    model: torch.nn.Module,
    input_shape: Sequence[int],
    path: str | Path | None = None,
    *,
    with_weights: bool = False,
    opset: int = OPSET,
) -> bytes:
    """The ONNX bytes of ``model`` for inputs of per-sample shape ``input_shape`` (C, H, W).

    ``with_weights=False`` (the protocol's choice): every parameter and buffer is a graph input named
    as in ``model.state_dict()``; the batch dimension is dynamic. ``with_weights=True`` bakes the
    current weights in (the re-export-per-round alternative, kept for the measurement).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be positive per-sample dims like (1, 28, 28), got {input_shape!r}")
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript
            # (not a dependency); the TorchScript path is the one that keeps named weight inputs.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros((2, *shape)),),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=with_weights,
                export_params=with_weights,
                keep_initializers_as_inputs=not with_weights,
            )
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    params = [n for n, _ in model.named_parameters()]
    buffers = [n for n in model.state_dict() if n not in set(params)]
    _set_meta(proto, {META_PARAMETERS: json.dumps(params), META_BUFFERS: json.dumps(buffers), META_NOISE: NOISE_SPEC})
    if not with_weights:
        inputs = {i.name for i in proto.graph.input}
        missing = [n for n in params + buffers if n not in inputs]
        if missing:
            raise RuntimeError(f"ONNX export lost weight inputs {missing}: cannot feed perturbed weights")
    data = proto.SerializeToString()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def numpy_weights(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state dict as float32 numpy arrays: what an ONNX client receives each round (4n bytes)."""
    return {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in state.items()}


def _set_meta(proto: onnx.ModelProto, values: Mapping[str, str]) -> None:
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
