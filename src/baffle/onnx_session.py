"""How baffle opens an ONNX Runtime session: CPU, a fixed small thread count, quiet.

Its own module because both the ONNX client and the int8 path (``baffle.onnx_quant``) open sessions,
and the client imports the int8 path: keeping this here keeps the two free of an import cycle.
torch-free.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def make_session(model: bytes | str | Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU ONNX Runtime session, ``threads`` intra-op threads (clients share small machines)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
