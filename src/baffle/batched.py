"""The batched perturbation engine: many perturbed copies of the model evaluated in one call.

The reference engine (``estimator.loss_differences``) runs K+1 (or 2K) separate forwards of one minibatch.
Each is a small computation (a LeNet forward at batch 32 is ~0.3 GFLOP) paid with the full per-call
overhead of every layer. Here a chunk of P perturbed models runs as ONE model whose every layer is P times
wider:

* activations of the P members live side by side in the channel dimension, layout ``(B, P*C, ...)``
  (and ``(B, P*F)`` for flat features), so per-channel or per-group operations need no change at all:
  activations, pooling, ``GroupNorm`` with ``P*G`` groups, ``BatchNorm`` over ``P*C`` channels;
* a convolution whose input is still shared (the first layer) is a single convolution with ``P*C_out``
  output channels; a convolution whose input already differs per member is a grouped convolution with
  ``groups = P`` (times its own groups); a linear layer is one wide GEMM (shared input) or a batched
  matmul (per-member input);
* the P weight sets are ``W + c_p * eps_p`` written from seeded directions generated chunk by chunk
  (``noise.directions``), so at most one chunk of directions is ever held; the chunk size P is derived
  from a memory budget (``max_memory_mb``).

The model is traced once with ``torch.fx`` and interpreted node by node. A model containing anything the
interpreter does not understand (a custom op, BatchNorm updating running statistics, dropout in training
mode, ...) is run with the reference loop instead, so every model works and unknown ones are merely slow.
The result equals the loop's to float32 rounding (``tests/test_batched.py``).

The same interpreter evaluates the perturbed models on several clients' minibatches concatenated
(``BatchedEngine.multi_client``): all clients of a simulated round share the seeds, so one pass serves
them all while each client's loss stays separate (per-sample losses, then per-client means).
"""

from __future__ import annotations

import logging
import math
import operator
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from baffle import estimator
from baffle.protocol import noise

log = logging.getLogger("baffle")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Leaf modules applied unchanged to the (B, P*C, ...) layout: they act per element or per channel.
_PER_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Softplus, nn.Mish, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
# Functions with the same property (called as torch.relu(x), F.hardswish(x), ...).
_PER_CHANNEL_FUNCTIONS: frozenset[Any] = frozenset(
    {
        torch.relu, F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.gelu, F.silu, torch.sigmoid, F.sigmoid,
        torch.tanh, F.tanh, F.leaky_relu, F.elu, F.softplus, F.mish,
        F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    }
)  # fmt: skip
_BINARY_FUNCTIONS: dict[Any, Callable[[Any, Any], Any]] = {
    operator.add: operator.add, torch.add: operator.add, operator.sub: operator.sub,
    torch.sub: operator.sub, operator.mul: operator.mul, torch.mul: operator.mul,
}  # fmt: skip
_PER_CHANNEL_METHODS = frozenset({"relu", "sigmoid", "tanh", "contiguous"})

MIN_CHUNK = 1
MAX_CHUNK = 64
# Members per chunk are also limited so that one layer's input+output for the whole chunk stays within
# about this many bytes (a last-level cache): bigger chunks were measured slower here, because the
# norm/activation/pooling passes then stream from DRAM (see docs/performance.md).
CACHE_BYTES = 16 * 2**20
# When one member at the full batch is already over CACHE_BYTES, the batch is evaluated in equal slices of
# at most this working set (models without batch statistics only): measured to halve a WRN-10-2 step's
# peak memory at batch 64 (docs/performance.md).
SLICE_BYTES = 8 * 2**20


class Unsupported(Exception):
    """The interpreter met something it cannot batch; the caller falls back to the reference loop."""


@dataclass
class _Value:
    """A node's value: ``shared`` (same for all members, the model's own shape) or per member
    (``batched``: layout (B, P*C, ...), members side by side in dim 1)."""

    t: torch.Tensor
    batched: bool


@dataclass
class _Slot:
    """Where a perturbed parameter sits in the flat direction vector."""

    offset: int
    numel: int
    shape: tuple[int, ...]


class _Program:
    """A traced model ready to be run for P members at once."""

    def __init__(self, model: nn.Module):
        try:
            self.gm = torch.fx.symbolic_trace(model)
        except Exception as e:  # noqa: BLE001 - any tracing failure means "not batchable"
            raise Unsupported(f"torch.fx cannot trace {type(model).__name__}: {e}") from None
        self.modules = dict(self.gm.named_modules())
        self.nodes = list(self.gm.graph.nodes)
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise Unsupported(f"model forward takes {len(placeholders)} inputs; the engine feeds exactly one")
        # last use of every node, so intermediate values are freed as soon as possible (memory bound)
        self.free_after: dict[torch.fx.Node, list[torch.fx.Node]] = {n: [] for n in self.nodes}
        last: dict[torch.fx.Node, torch.fx.Node] = {}
        for n in self.nodes:
            for a in n.all_input_nodes:
                last[a] = n
        for a, user in last.items():
            self.free_after[user].append(a)
        self.batch_stats = False  # any layer whose output depends on the other samples of the batch
        for n in self.nodes:
            if n.op == "call_module":
                m = self.modules[n.target]
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    if m.training and m.running_mean is not None:
                        # every forward would update the running statistics (the loop reproduces that)
                        raise Unsupported("BatchNorm updating running statistics in training mode")
                    self.batch_stats = self.batch_stats or m.running_mean is None
            elif n.op == "get_attr":
                raise Unsupported(f"model reads attribute {n.target!r} directly in forward")
        self._activation_per_sample: dict[tuple[int, ...], tuple[int, int]] = {}

    # ---- memory -------------------------------------------------------------------------------
    def activation_floats_per_sample(self, model: nn.Module, sample_shape: tuple[int, ...]) -> tuple[int, int]:
        """Per sample, the largest (inputs + output) floats any one layer touches, and the same including
        an im2col-sized convolution workspace (a conservative bound for the memory budget)."""
        if sample_shape in self._activation_per_sample:
            return self._activation_per_sample[sample_shape]
        sizes: dict[torch.fx.Node, int] = {}
        peak = io_peak = int(math.prod(sample_shape))
        with torch.inference_mode():
            env: dict[torch.fx.Node, Any] = {}
            for n in self.nodes:
                if n.op == "placeholder":
                    env[n] = torch.zeros((2, *sample_shape))
                elif n.op == "output":
                    continue
                else:
                    args = torch.fx.node.map_arg(n.args, lambda a: env[a])
                    kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: env[a])
                    if n.op == "call_module":
                        env[n] = self.modules[n.target](*args, **kwargs)
                    elif n.op == "call_function":
                        env[n] = n.target(*args, **kwargs)
                    elif n.op == "call_method":
                        env[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
                out = env.get(n)
                if isinstance(out, torch.Tensor):
                    sizes[n] = out.numel() // 2
                    ins = sum(sizes.get(a, 0) for a in n.all_input_nodes)
                    work = 0
                    if n.op == "call_module" and isinstance(self.modules[n.target], nn.Conv2d):
                        conv = self.modules[n.target]
                        kk = math.prod(conv.kernel_size)
                        work = (conv.in_channels * kk) * (out.shape[-1] * out.shape[-2])  # im2col buffer
                    peak = max(peak, ins + sizes[n] + work)
                    io_peak = max(io_peak, ins + sizes[n])
        self._activation_per_sample[sample_shape] = (io_peak, peak)
        return io_peak, peak

    # ---- the batched forward ------------------------------------------------------------------
    def run(self, x: torch.Tensor, P: int, weights: dict[int, torch.Tensor]) -> _Value:
        """Forward of P members. ``weights`` maps id(parameter) -> (P, *shape) perturbed copies;
        parameters absent from it are shared by all members."""
        env: dict[torch.fx.Node, Any] = {}
        result: Any = None
        for n in self.nodes:
            if n.op == "placeholder":
                env[n] = _Value(x, False)
            elif n.op == "output":
                result = env[n.args[0]] if isinstance(n.args[0], torch.fx.Node) else None
            elif n.op == "call_module":
                env[n] = self._module(self.modules[n.target], n, env, P, weights)
            elif n.op == "call_function":
                env[n] = self._function(n, env, P)
            elif n.op == "call_method":
                env[n] = self._method(n, env, P)
            else:
                raise Unsupported(f"fx node kind {n.op}")
            for a in self.free_after[n]:
                env.pop(a, None)
        if not isinstance(result, _Value):
            raise Unsupported("model output is not a single tensor")
        return result

    @staticmethod
    def _arg(n: torch.fx.Node, env: dict, i: int = 0) -> _Value:
        a = n.args[i] if len(n.args) > i else None
        if not isinstance(a, torch.fx.Node) or not isinstance(env.get(a), _Value):
            raise Unsupported(f"node {n.name}: argument {i} is not a tensor produced by the model")
        return env[a]

    def _module(self, m: nn.Module, n: torch.fx.Node, env: dict, P: int, weights: dict) -> _Value:
        if n.kwargs or len(n.args) != 1:
            raise Unsupported(f"module {n.target} called with extra arguments")
        v = self._arg(n, env)
        if type(m) is nn.Conv2d:
            return _conv2d(m, v, P, weights)
        if type(m) is nn.Linear:
            return _linear(m, v, P, weights)
        if type(m) is nn.GroupNorm:
            return _group_norm(m, v, P, weights)
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            return _batch_norm(m, v, P, weights)
        if type(m) is nn.Flatten:
            if not v.batched:
                return _Value(m(v.t), False)
            if m.start_dim != 1 or m.end_dim != -1:
                raise Unsupported("Flatten other than flatten(1, -1) on per-member values")
            return _Value(v.t.flatten(1), True)
        if type(m) is nn.Dropout:
            if m.training and m.p > 0:
                raise Unsupported("dropout in training mode is random per forward")
            return v
        if type(m) is nn.MaxPool2d and _is_tiling_pool(m):
            return _Value(_tiling_max_pool2d(v.t, m.kernel_size), v.batched)
        if type(m) in _PER_CHANNEL_MODULES:
            if getattr(m, "return_indices", False):
                raise Unsupported("pooling with return_indices")
            _check_params_shared(m, weights)
            return _Value(m(v.t), v.batched)
        raise Unsupported(f"module type {type(m).__name__}")

    def _function(self, n: torch.fx.Node, env: dict, P: int) -> _Value:
        fn = n.target
        if fn in _PER_CHANNEL_FUNCTIONS:
            v = self._arg(n, env)
            if any(isinstance(a, torch.fx.Node) for a in list(n.args[1:]) + list(n.kwargs.values())):
                raise Unsupported(f"{fn} with tensor arguments")
            return _Value(fn(v.t, *n.args[1:], **n.kwargs), v.batched)
        if fn is torch.flatten:
            v = self._arg(n, env)
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            if not v.batched:
                return _Value(torch.flatten(v.t, start, end), False)
            if start != 1 or end != -1:
                raise Unsupported("flatten other than flatten(x, 1) on per-member values")
            return _Value(v.t.flatten(1), True)
        if fn in _BINARY_FUNCTIONS and not n.kwargs and len(n.args) == 2:
            op = _BINARY_FUNCTIONS[fn]
            a, b = n.args
            if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
                va, vb = env[a], env[b]
                if va.batched == vb.batched:
                    return _Value(op(va.t, vb.t), va.batched)
                sa = va.t.shape if not va.batched else _logical(va.t, P)
                sb = vb.t.shape if not vb.batched else _logical(vb.t, P)
                if sa != sb:
                    raise Unsupported(f"broadcasting {tuple(sa)} with {tuple(sb)}")
                ta = va.t if va.batched else _lift(va.t, P)
                tb = vb.t if vb.batched else _lift(vb.t, P)
                return _Value(op(ta, tb), True)
            if isinstance(a, torch.fx.Node) and isinstance(b, (int, float)):
                return _Value(op(env[a].t, b), env[a].batched)
            if isinstance(b, torch.fx.Node) and isinstance(a, (int, float)):
                return _Value(op(a, env[b].t), env[b].batched)
        raise Unsupported(f"function {getattr(fn, '__name__', fn)}")

    def _method(self, n: torch.fx.Node, env: dict, P: int) -> _Value:
        v = self._arg(n, env)
        if n.target in _PER_CHANNEL_METHODS and len(n.args) == 1 and not n.kwargs:
            return _Value(getattr(v.t, n.target)(), v.batched)
        if n.target == "flatten":
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            if not v.batched:
                return _Value(v.t.flatten(start, end), False)
            if start == 1 and end == -1:
                return _Value(v.t.flatten(1), True)
        raise Unsupported(f"tensor method {n.target}")


# ---- layers ---------------------------------------------------------------------------------------
def _logical(t: torch.Tensor, P: int) -> torch.Size:
    return torch.Size((t.shape[0], t.shape[1] // P, *t.shape[2:]))


def _lift(t: torch.Tensor, P: int) -> torch.Tensor:
    """Shared (B, C, ...) -> per-member layout (B, P*C, ...), every member a copy."""
    B, C = t.shape[0], t.shape[1]
    return t.unsqueeze(1).expand(B, P, C, *t.shape[2:]).reshape(B, P * C, *t.shape[2:])


def _stacked(p: torch.Tensor | None, P: int, weights: dict) -> tuple[torch.Tensor | None, bool]:
    """(P, *shape) copies of a parameter and whether they differ per member."""
    if p is None:
        return None, False
    w = weights.get(id(p))
    if w is not None:
        return w, True
    return p.detach().unsqueeze(0).expand(P, *p.shape), False


def _check_params_shared(m: nn.Module, weights: dict) -> None:
    if any(id(p) in weights for p in m.parameters(recurse=False)):
        raise Unsupported(f"perturbed parameters in {type(m).__name__}")


def _is_tiling_pool(m: nn.MaxPool2d) -> bool:
    """A max-pool whose windows tile the input (kernel == stride, no padding/dilation/indices)."""
    k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
    return k == s and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1) and not m.return_indices


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _tiling_max_pool2d(t: torch.Tensor, kernel: Any) -> torch.Tensor:
    """Max-pool with non-overlapping windows as an elementwise max of k*k strided views.

    Bit-identical to ``F.max_pool2d`` (a max is exact) and, measured on this project's CPU, over 10x
    faster than torch's NCHW pooling kernel on the wide (B, P*C, H, W) tensors of a chunk
    (benchmarks/bench_client.py, docs/performance.md).
    """
    kh, kw = _pair(kernel)
    H, W = t.shape[-2] - t.shape[-2] % kh, t.shape[-1] - t.shape[-1] % kw  # floor mode drops the border
    out: torch.Tensor | None = None
    for i in range(kh):
        for j in range(kw):
            view = t[..., i:H:kh, j:W:kw]
            out = view.clone() if out is None else torch.maximum(out, view, out=out)
    assert out is not None
    return out


# Largest im2col buffer (bytes) the shared-input convolution may build; above it, use the direct conv.
_UNFOLD_LIMIT = 64 * 2**20


def _shared_input_conv(m: nn.Conv2d, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Convolution of one shared input with P*C_out filters: im2col once, then one wide GEMM per sample.

    The first layer typically has very few input channels (1 or 3), where the direct convolution kernel
    is far from peak; the GEMM (P*C_out x C_in*k*k) @ (C_in*k*k x H*W) is not. Same values as
    ``F.conv2d`` up to float32 summation order.
    """
    B = x.shape[0]
    kh, kw = _pair(m.kernel_size)
    cols = F.unfold(x, (kh, kw), dilation=m.dilation, padding=m.padding, stride=m.stride)  # (B, Cin*kh*kw, L)
    Ho = (x.shape[-2] + 2 * _pair(m.padding)[0] - _pair(m.dilation)[0] * (kh - 1) - 1) // _pair(m.stride)[0] + 1
    Wo = cols.shape[-1] // Ho
    out = torch.matmul(w.reshape(-1, cols.shape[1]), cols)  # (B, P*Cout, L)
    if bias is not None:
        out += bias.view(1, -1, 1)
    return out.view(B, -1, Ho, Wo)


def _conv2d(m: nn.Conv2d, v: _Value, P: int, weights: dict) -> _Value:
    if m.padding_mode != "zeros":
        raise Unsupported(f"conv padding_mode={m.padding_mode!r}")
    w, w_pert = _stacked(m.weight, P, weights)
    b, b_pert = _stacked(m.bias, P, weights)
    if not v.batched and not w_pert and not b_pert:
        return _Value(m(v.t), False)
    assert w is not None
    bias = b.reshape(-1) if b is not None else None
    if not v.batched and w_pert:  # shared input: one convolution with P*C_out output channels
        kk = math.prod(_pair(m.kernel_size))
        # the im2col GEMM pays off through its wide P*C_out rows; for a single member use the direct conv
        if P > 1 and m.groups == 1 and not isinstance(m.padding, str) and v.t.numel() * kk * 4 <= _UNFOLD_LIMIT:
            return _Value(_shared_input_conv(m, v.t, w, bias), True)
        out = F.conv2d(v.t, w.reshape(-1, *m.weight.shape[1:]), bias, m.stride, m.padding, m.dilation, m.groups)
        return _Value(out, True)
    if not v.batched:  # only the bias differs
        out = F.conv2d(v.t, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
        out = _lift(out, P)
        return _Value(out + bias.view(1, -1, 1, 1), True)  # type: ignore[union-attr]
    # per-member input: a grouped convolution, one group per member (measured no slower than P separate
    # convolutions at small P, and much faster with 2 threads, where each call costs a thread barrier)
    out = F.conv2d(v.t, w.reshape(-1, *m.weight.shape[1:]), bias, m.stride, m.padding, m.dilation, m.groups * P)
    return _Value(out, True)


def _linear(m: nn.Linear, v: _Value, P: int, weights: dict) -> _Value:
    if v.t.dim() != 2:
        raise Unsupported("Linear on inputs with more than 2 dimensions")
    w, w_pert = _stacked(m.weight, P, weights)  # (P, O, F)
    b, b_pert = _stacked(m.bias, P, weights)  # (P, O)
    if not v.batched and not w_pert and not b_pert:
        return _Value(m(v.t), False)
    assert w is not None
    O, Fin = m.weight.shape
    B = v.t.shape[0]
    if not v.batched:  # shared input: one GEMM with P*O outputs
        out = v.t @ w.reshape(P * O, Fin).t()
    else:
        h = v.t.view(B, P, Fin).transpose(0, 1)  # (P, B, F)
        out = torch.bmm(h, w.transpose(1, 2)).transpose(0, 1).reshape(B, P * O)
    if b is not None:
        out = out + b.reshape(1, P * O)
    return _Value(out, True)


def _group_norm(m: nn.GroupNorm, v: _Value, P: int, weights: dict) -> _Value:
    w, w_pert = _stacked(m.weight, P, weights)
    b, b_pert = _stacked(m.bias, P, weights)
    if not v.batched and not w_pert and not b_pert:
        return _Value(m(v.t), False)
    t = v.t if v.batched else _lift(v.t, P)
    out = F.group_norm(t, m.num_groups * P, None, None, m.eps)
    return _Value(_affine(out, w, b), True)


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, v: _Value, P: int, weights: dict) -> _Value:
    if m.training and m.track_running_stats and m.running_mean is not None:
        raise Unsupported("BatchNorm updating running statistics in training mode")
    w, w_pert = _stacked(m.weight, P, weights)
    b, b_pert = _stacked(m.bias, P, weights)
    if not v.batched and not w_pert and not b_pert:
        return _Value(m(v.t), False)
    t = v.t if v.batched else _lift(v.t, P)
    if m.running_mean is None:
        out = F.batch_norm(t, None, None, None, None, True, 0.0, m.eps)
    else:  # eval mode with running statistics: a fixed per-channel affine map
        rm, rv = m.running_mean.repeat(P), m.running_var.repeat(P)  # type: ignore[union-attr]
        out = F.batch_norm(t, rm, rv, None, None, False, 0.0, m.eps)
    return _Value(_affine(out, w, b), True)


def _affine(out: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor:
    shape = (1, -1) + (1,) * (out.dim() - 2)
    if w is not None:
        out = out * w.reshape(shape)
    if b is not None:
        out = out + b.reshape(shape)
    return out


# ---- the engine -----------------------------------------------------------------------------------
def _members(K: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """Which direction each evaluated model uses (-1: none, the base point) and its sign.

    forward: [base, +1, +2, ...]; central: [+1, -1, +2, -2, ...] (a pair never straddles chunks when the
    chunk size is even, so each direction is generated once)."""
    if scheme == "forward":
        idx = np.concatenate([[-1], np.arange(K)])
        sign = np.concatenate([[0.0], np.ones(K)])
    else:
        idx = np.repeat(np.arange(K), 2)
        sign = np.tile([1.0, -1.0], K)
    return idx.astype(np.int64), sign


def _per_sample_losses(logits: torch.Tensor, y: torch.Tensor, P: int, loss_fn: LossFn, segments: Sequence[int]) -> torch.Tensor:
    """(P, S) mean loss of every member on every segment (client) of the batch; logits (B, P*O)."""
    B = logits.shape[0]
    z = logits.view(B, P, -1)
    if loss_fn is F.cross_entropy:
        per = F.cross_entropy(z.transpose(0, 1).reshape(P * B, -1), y.repeat(P), reduction="none").view(P, B)
        return torch.stack([seg.mean(1) for seg in per.split(list(segments), dim=1)], dim=1)
    out = torch.empty(P, len(segments))
    start = 0
    for s, length in enumerate(segments):
        for p in range(P):
            out[p, s] = loss_fn(z[start : start + length, p], y[start : start + length])
        start += length
    return out


class BatchedEngine:
    """Callable with the signature of ``estimator.loss_differences``; see the module docstring."""

    def __init__(self, max_memory_mb: int = 512, max_chunk: int = MAX_CHUNK, cache_bytes: int = CACHE_BYTES):
        if not isinstance(max_memory_mb, int) or isinstance(max_memory_mb, bool) or max_memory_mb < 1:
            raise ValueError(f"max_memory_mb must be a positive integer, got {max_memory_mb!r}")
        if max_chunk < 1:
            raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
        self.max_memory_mb = max_memory_mb
        self.max_chunk = max_chunk
        self.cache_bytes = cache_bytes
        self._programs: weakref.WeakKeyDictionary[nn.Module, _Program | str] = weakref.WeakKeyDictionary()
        self.last_chunk = 0  # members per chunk of the last call (for benchmarks and tests)
        self.last_sub_batch = 0  # samples per batched call of the last call

    # ---- public -------------------------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module,
        params: Sequence[tuple[str, nn.Parameter]],
        x: torch.Tensor,
        y: torch.Tensor,
        seeds: Sequence[int] | np.ndarray,
        sigma: float,
        scheme: str = "forward",
        loss_fn: LossFn = F.cross_entropy,
    ) -> np.ndarray:
        out = self.multi_client(model, params, [(x, y)], seeds, sigma, scheme, loss_fn)
        return out[0]

    def supports(self, model: nn.Module) -> bool:
        """Whether ``model`` runs on the batched path (else calls fall back to the loop)."""
        return isinstance(self._program(model), _Program)

    def can_fuse_clients(self, model: nn.Module) -> bool:
        """Whether several clients' minibatches may share one pass: the model must be batchable and no
        layer may mix samples (BatchNorm with batch statistics would mix the clients' batches)."""
        prog = self._program(model)
        return isinstance(prog, _Program) and not prog.batch_stats

    def multi_client(
        self,
        model: nn.Module,
        params: Sequence[tuple[str, nn.Parameter]],
        batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
        seeds: Sequence[int] | np.ndarray,
        sigma: float,
        scheme: str = "forward",
        loss_fn: LossFn = F.cross_entropy,
    ) -> list[np.ndarray]:
        """K loss differences for each of several minibatches under the same seeds, in one pass per chunk.

        With a single batch this is exactly the engine call. With several, the model must not mix samples
        (see :meth:`can_fuse_clients`), otherwise the batches are evaluated one by one.
        """
        if scheme not in estimator.SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; valid: {estimator.SCHEMES}")
        if not batches:
            return []
        seeds = np.asarray(seeds)
        prog = self._program(model)
        if not isinstance(prog, _Program) or (len(batches) > 1 and prog.batch_stats):
            return [self._fallback(model, params, x, y, seeds, sigma, scheme, loss_fn) for x, y in batches]
        try:
            return self._batched(prog, model, params, batches, seeds, sigma, scheme, loss_fn)
        except Unsupported as e:
            log.info("batched engine: %s; using the loop for %s", e, type(model).__name__)
            self._programs[model] = str(e)
            return [self._fallback(model, params, x, y, seeds, sigma, scheme, loss_fn) for x, y in batches]

    def chunk_size(self, model: nn.Module, n: int, batch: int, sample_shape: tuple[int, ...], total: int) -> int:
        """Members per chunk so that weights, directions and activations fit ``max_memory_mb``."""
        prog = self._program(model)
        if not isinstance(prog, _Program):
            return 1
        io, act = prog.activation_floats_per_sample(model, tuple(sample_shape))
        per_member = 4 * (3 * n + 2 * act * batch)  # directions + weights (+ slack) + activations, workspace
        budget = self.max_memory_mb * 2**20
        by_memory = budget // max(per_member, 1)
        by_cache = self.cache_bytes // max(4 * io * batch, 1)
        return int(max(MIN_CHUNK, min(self.max_chunk, total, by_memory, by_cache)))

    def sub_batch(self, model: nn.Module, n: int, batch: int, sample_shape: tuple[int, ...], chunk: int) -> int:
        """Samples per call when even one member at the full batch exceeds the working-set bound.

        Only for models whose layers treat samples independently (no batch statistics): their losses
        are per-sample, so a batch can be evaluated in slices with exactly the same values. This is what
        keeps a forward-only step's memory far below a backprop step's at large batches."""
        prog = self._program(model)
        if chunk > 1 or not isinstance(prog, _Program) or prog.batch_stats:
            return batch
        io, act = prog.activation_floats_per_sample(model, tuple(sample_shape))
        by_cache = self.cache_bytes * SLICE_BYTES // CACHE_BYTES // max(4 * io, 1)
        by_memory = max(self.max_memory_mb * 2**20 - 12 * n, 0) // max(8 * act, 1)
        most = max(1, min(batch, by_cache, by_memory))
        return -(-batch // -(-batch // most))  # equal slices: 32 samples at most 21 -> 2 x 16

    # ---- internals ----------------------------------------------------------------------------
    def _program(self, model: nn.Module) -> _Program | str:
        prog = self._programs.get(model)
        if prog is None:
            try:
                prog = _Program(model)
            except Unsupported as e:
                log.info("batched engine: %s; using the loop for %s", e, type(model).__name__)
                prog = str(e)
            self._programs[model] = prog
        return prog

    @staticmethod
    def _fallback(model, params, x, y, seeds, sigma, scheme, loss_fn) -> np.ndarray:
        return estimator.loss_differences(model, params, x, y, seeds, sigma, scheme, loss_fn)

    def _batched(self, prog, model, params, batches, seeds, sigma, scheme, loss_fn) -> list[np.ndarray]:
        K = len(seeds)
        segments = [len(y) for _, y in batches]
        x = batches[0][0] if len(batches) == 1 else torch.cat([b[0] for b in batches])
        y = batches[0][1] if len(batches) == 1 else torch.cat([b[1] for b in batches])
        plist = [p for _, p in params]
        n = sum(p.numel() for p in plist)
        slots: list[_Slot] = []
        off = 0
        for p in plist:
            slots.append(_Slot(off, p.numel(), tuple(p.shape)))
            off += p.numel()
        idx, sign = _members(K, scheme)
        total = len(idx)
        P = self.chunk_size(model, n, x.shape[0], tuple(x.shape[1:]), total)
        if scheme == "central" and P > 1 and P % 2:
            P -= 1
        self.last_chunk = P
        sub = self.sub_batch(model, n, x.shape[0], tuple(x.shape[1:]), P)
        self.last_sub_batch = sub
        losses = np.empty((total, len(batches)), dtype=np.float64)
        with torch.inference_mode():
            flats = [p.detach().reshape(-1) for p in plist]
            for start in range(0, total, P):
                c_idx, c_sign = idx[start : start + P], sign[start : start + P]
                m = len(c_idx)
                dirs = np.unique(c_idx[c_idx >= 0])
                D = torch.from_numpy(noise.directions(seeds[dirs], n)) if len(dirs) else torch.zeros(1, n)
                local = torch.from_numpy(np.searchsorted(dirs, np.maximum(c_idx, 0)) if len(dirs) else np.zeros(m, np.int64))
                coef = torch.tensor(c_sign * sigma, dtype=torch.float32).view(m, 1)
                E = D.index_select(0, local) if len(dirs) != m or len(dirs) == 0 else D
                weights = {}
                for p, flat, s in zip(plist, flats, slots):
                    w = torch.addcmul(flat.unsqueeze(0), coef, E[:, s.offset : s.offset + s.numel])
                    weights[id(p)] = w.view(m, *s.shape)
                del D, E
                parts = []
                for b0 in range(0, x.shape[0], sub):
                    out = prog.run(x[b0 : b0 + sub], m, weights)
                    parts.append(out.t if out.batched else _lift(out.t, m))
                logits = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
                losses[start : start + m] = _per_sample_losses(logits, y, m, loss_fn, segments).double().numpy()
        if scheme == "forward":
            diffs = losses[1:] - losses[0:1]
        else:
            diffs = (losses[0::2] - losses[1::2]) / 2.0
        return [diffs[:, j].astype(np.float32) for j in range(len(batches))]


def make_batched_engine(max_memory_mb: int = 512) -> BatchedEngine:
    """The engine ``estimator.engine = "batched"`` selects: same signature and result as
    ``estimator.loss_differences``, perturbations evaluated in memory-bounded chunks."""
    return BatchedEngine(max_memory_mb)


def fused_uploads(clients: Sequence[Any], plan: Any) -> list[Any] | None:
    """All sampled clients' uploads of one round from one batched pass per chunk, or None if not applicable.

    Used by the in-process simulator (``estimator.fuse_clients = true``). It applies only when every client
    is a plain ``baffle.client.Client`` (no subclass or wrapper with behaviour of its own, e.g. a failure
    injector or a non-torch client), all share the same model, engine, trainable set and loss, the plan
    carries no weights, and the model has no layer that mixes the samples of a batch (BatchNorm with batch
    statistics): then each client's upload is exactly what ``Client.step`` would return, to float32
    rounding. Each client still draws its own minibatch with its own sampler, in order, so the data
    stream (and a resumed run) is the same as on the client-by-client path.
    """
    from baffle.client import Client
    from baffle.messages import Upload

    if len(clients) < 2 or plan.weights is not None:
        return None
    first = clients[0]
    engine = getattr(first, "engine", None)
    if not isinstance(engine, BatchedEngine):
        return None
    for c in clients:
        if type(c) is not Client or c.model is not first.model or c.engine is not engine:
            return None
        if c.trainable != first.trainable or c.loss_fn is not first.loss_fn:
            return None
    if not engine.can_fuse_clients(first.model):
        return None
    batches = [c.next_batch() for c in clients]
    params = estimator.select_parameters(first.model, first.trainable)
    diffs = engine.multi_client(first.model, params, batches, plan.seeds, plan.sigma, plan.scheme, first.loss_fn)
    return [
        Upload(client_id=c.client_id, round=plan.round, loss_diffs=d, num_samples=len(b[1]))
        for c, d, b in zip(clients, diffs, batches)
    ]
