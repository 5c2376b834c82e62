"""An inference-only BAFFLE client: ONNX Runtime + numpy, no torch, no autograd.

This is the paper's practical promise made literal: a device that can only run inference answers a
round with the same K loss differences as the torch client. It imports numpy, onnxruntime and the
torch-free protocol layer (``baffle.protocol``: noise, messages, the flat layout and its selection rule,
the schemes, the minibatch sampler, the ONNX names); ``tests/test_onnx_client.py`` runs it in a fresh
process and checks that ``torch`` never enters ``sys.modules``.

The model comes from :func:`baffle.export.export_onnx` (weights are graph inputs, exported once); each
round the client receives the global weights as arrays, regenerates eps_k with ``baffle.protocol.noise.direction``
(the same numpy code as the server, so bit-identical), and feeds W + sigma * eps_k to the same session.
The flat-vector layout is :mod:`baffle.protocol.layout`, as for the torch client: ``named_parameters``
order (stored in the model's metadata), filtered by the same glob patterns.

Optional variants (see docs/inference-clients.md):
* ``mask``: a fixed pruning mask over the flat vector; masked entries are never perturbed.
* ``precision="int8"``: the perturbed model runs with int8-quantized activations, weights stay float
  (``baffle.onnx_quant``); ``"int8_weights"`` also quantizes weights (shown to erase small sigma).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from baffle.config.choices import ONNX_PRECISIONS as PRECISIONS  # the one list of valid choices per key
from baffle.onnx_session import make_session
from baffle.protocol import noise
from baffle.protocol.layout import FlatLayout, select_names
from baffle.protocol.messages import RoundPlan, Upload
from baffle.protocol.onnx_names import INPUT_NAME, META_NOISE, META_PARAMETERS
from baffle.protocol.sampler import BatchSampler
from baffle.protocol.schemes import SCHEMES, check_scheme


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax cross-entropy (what ``torch.nn.functional.cross_entropy`` computes), in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def parameter_names(session: ort.InferenceSession) -> list[str]:
    """Parameter names in ``named_parameters`` order, from the model's baffle metadata."""
    meta = session.get_modelmeta().custom_metadata_map
    if META_PARAMETERS not in meta:
        raise ValueError("ONNX model has no 'baffle.parameters' metadata: export it with baffle.export.export_onnx")
    if meta.get(META_NOISE, noise.NOISE_SPEC) != noise.NOISE_SPEC:
        raise ValueError(f"model was exported for noise spec {meta[META_NOISE]!r}, this client has {noise.NOISE_SPEC!r}")
    return list(json.loads(meta[META_PARAMETERS]))


def check_weights(session: ort.InferenceSession, weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The weight feeds as float32 arrays, refusing anything that does not fit the graph's inputs."""
    expected = {i.name: i.shape for i in session.get_inputs() if i.name != INPUT_NAME}
    missing, unexpected = set(expected) - set(weights), set(weights) - set(expected)
    if missing or unexpected:
        raise ValueError(f"weights do not fit the ONNX model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    out = {}
    for name, shape in expected.items():
        arr = np.ascontiguousarray(np.asarray(weights[name], dtype=np.float32))
        if list(arr.shape) != list(shape):
            raise ValueError(f"weight {name} has shape {tuple(arr.shape)}, ONNX model expects {tuple(shape)}")
        out[name] = arr
    return out


def loss_differences(
    session: ort.InferenceSession,
    weights: Mapping[str, np.ndarray],
    names: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    seeds: Sequence[int] | np.ndarray,
    sigma: float,
    scheme: str = "forward",
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """K loss differences with ONNX Runtime: same definition and order as ``estimator.loss_differences``.

    The K perturbed models are evaluated one ``session.run`` each: the graph has one weight set, and on
    a CPU a loop costs about what a perturbation-batched graph would (see docs/inference-clients.md).
    """
    check_scheme(scheme)
    layout = FlatLayout(names, weights)
    if mask is not None and np.shape(mask) != (layout.n,):
        raise ValueError(f"pruning mask has shape {np.shape(mask)}, expected ({layout.n},)")
    keep = None if mask is None else np.asarray(mask, dtype=np.float32)
    orig = layout.flatten(weights)
    feeds = dict(weights)
    feeds[INPUT_NAME] = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    scale = np.float32(sigma)

    def loss_at(flat: np.ndarray) -> float:
        feeds.update(layout.unflatten(flat))
        return cross_entropy(session.run(None, feeds)[0], y)

    out = np.empty(len(seeds), dtype=np.float32)
    base = loss_at(orig) if scheme == "forward" else 0.0
    for k, seed in enumerate(seeds):
        eps = noise.direction(seed, layout.n)
        if keep is not None:
            eps *= keep
        plus = loss_at(orig + scale * eps)
        if scheme == "forward":
            out[k] = plus - base
        else:
            out[k] = (plus - loss_at(orig - scale * eps)) / 2.0
    return out


class OnnxClient:
    """A federated client whose only engine is ONNX Runtime. Answers ``RoundPlan`` with ``Upload``.

    ``x``/``y`` may be the whole training set as arrays (``indices`` picks this client's samples). The
    client keeps the last weights it received; a plan with ``weights=None`` reuses them.
    """

    needs_weights = True  # the simulator must send the round's weights (it cannot share a torch model)

    def __init__(
        self,
        client_id: int,
        x: np.ndarray,
        y: np.ndarray,
        indices: np.ndarray,
        model: bytes | str | Path,
        *,
        batch_size: int,
        seed: int,
        trainable: Sequence[str] | None = None,
        mask: np.ndarray | None = None,
        precision: str = "float",
        threads: int = 1,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {PRECISIONS}")
        if len(indices) == 0:
            raise ValueError(f"client {client_id} has no training samples")
        self.client_id = client_id
        self.x, self.y = x, y
        self.indices = np.asarray(indices)
        self.model_bytes = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.session = make_session(self.model_bytes, threads)
        self.threads = threads
        self.names = select_names(parameter_names(self.session), trainable)
        self.mask = mask
        self.precision = precision
        self.sampler = BatchSampler(self.indices, batch_size, seed)
        self.weights: dict[str, np.ndarray] | None = None

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def set_weights(self, weights: Mapping[str, Any]) -> None:
        self.weights = check_weights(self.session, weights)

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        idx = self.sampler.next_batch()
        return np.asarray(self.x[idx], dtype=np.float32), np.asarray(self.y[idx], dtype=np.int64)

    def round_session(self, x: np.ndarray) -> ort.InferenceSession:
        """The session that evaluates this round's perturbed models (re-calibrated when quantized)."""
        if self.precision == "float":
            return self.session
        from baffle.onnx_quant import quantized_session

        assert self.weights is not None
        return quantized_session(self.model_bytes, x, self.weights, self.precision == "int8_weights", self.threads)

    def step(self, plan: RoundPlan) -> Upload:
        """K loss differences on one minibatch with ONNX Runtime, forward passes only."""
        if plan.weights is not None:
            self.set_weights(plan.weights)
        if self.weights is None:
            raise ValueError(f"client {self.client_id} has no weights: the first plan must carry them")
        x, y = self.next_batch()
        session = self.round_session(x)
        diffs = loss_differences(session, self.weights, self.names, x, y, plan.seeds, plan.sigma, plan.scheme, self.mask)
        return Upload(client_id=self.client_id, round=plan.round, loss_diffs=diffs, num_samples=len(y))

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m baffle.onnx_client``: answer one round as a plain ONNX Runtime process (no torch).

    Reads the exported model, the round's weights (.npz of the state dict), the client's data (.npz with
    x, y) and the round's seeds (derived from --run-seed/--round/--K exactly as the server does), writes
    the ``Upload`` wire bytes. A deployment wraps this in whatever transport it has.
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m baffle.onnx_client", description=main.__doc__)
    ap.add_argument("--model", required=True, help="ONNX file from baffle.export.export_onnx")
    ap.add_argument("--weights", required=True, help=".npz of the round's global weights (state_dict names)")
    ap.add_argument("--data", required=True, help=".npz with x (N,C,H,W float32) and y (N int64)")
    ap.add_argument("--client-id", type=int, required=True)
    ap.add_argument("--run-seed", type=int, required=True)
    ap.add_argument("--round", type=int, required=True)
    ap.add_argument("--K", type=int, required=True)
    ap.add_argument("--sigma", type=float, required=True)
    ap.add_argument("--scheme", default="forward", choices=SCHEMES)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0, help="this client's minibatch sampler seed")
    ap.add_argument("--precision", default="float", choices=PRECISIONS)
    ap.add_argument("--out", required=True, help="where to write the Upload bytes")
    args = ap.parse_args(argv)
    data = np.load(args.data)
    x, y = data["x"], data["y"]
    client = OnnxClient(args.client_id, x, y, np.arange(len(y)), args.model, batch_size=args.batch_size, seed=args.seed,
                        precision=args.precision)
    seeds = noise.round_seeds(args.run_seed, args.round, args.K)
    plan = RoundPlan(args.round, seeds, args.sigma, args.scheme, args.batch_size, dict(np.load(args.weights)))
    Path(args.out).write_bytes(client.step(plan).to_bytes())


if __name__ == "__main__":
    main()
