"""The fx program of the batched engine: a traced model interpreted node by node for P members at once.

The model is traced once with ``torch.fx``; :meth:`Program.run` walks the graph, sending each node to the
per-op kernel that knows how to evaluate it for P perturbed members (:mod:`.kernels`). Anything the
interpreter does not understand (a custom op, BatchNorm updating running statistics, dropout in training
mode, a second input, ...) raises :class:`Unsupported`, and the engine falls back to the reference loop for
that model, so every model works and unknown ones are merely slow.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Iterable

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from baffle.engine.batched import norm_act_pool as nap
from baffle.engine.batched.kernels import (
    Unsupported,
    Value,
    _pair,
    batch_norm,
    check_params_shared,
    conv2d,
    group_norm,
    im2col_fits,
    is_tiling_pool,
    lift,
    linear,
    logical,
    shared_im2col,
    stacked,
    tiling_max_pool2d,
)

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
# Activations with an in-place form that computes the same values with the same kernel: applied in place
# to a per-member value no other node reads (one pass over the widest tensors of a chunk instead of two)
_IN_PLACE: dict[type[nn.Module], Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    nn.ReLU: lambda m, t: F.relu(t, inplace=True), nn.ReLU6: lambda m, t: F.relu6(t, inplace=True),
    nn.Hardswish: lambda m, t: F.hardswish(t, inplace=True), nn.Hardsigmoid: lambda m, t: F.hardsigmoid(t, inplace=True),
    nn.SiLU: lambda m, t: F.silu(t, inplace=True),
}  # fmt: skip


class Program:
    """A traced model ready to be run for P members at once (raises Unsupported if it cannot be)."""

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
        # nodes whose per-member value is a new tensor (not a view of another node's): the kernels of these
        # module types always allocate their output
        fresh_types = (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool2d)
        self.fresh = {n for n in self.nodes if n.op == "call_module" and type(self.modules[n.target]) in fresh_types}
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
        # the memory planner's per-sample activation sizes, by sample shape (planner.activation_floats)
        self.activation_cache: dict[tuple[Any, ...], tuple[int, int, int]] = {}
        self._shared: dict[frozenset[int], frozenset[torch.fx.Node]] = {}  # shared_nodes, by perturbed set
        self._tops: dict[frozenset[torch.fx.Node], Any] = {}  # top(), by shared set
        # GroupNorm -> activation -> 2x2 max-pool chains, each node the sole reader of the one before: run as one
        # compiled pass (norm_act_pool.py) where the kernel is built and covers the tensor
        self.fused: dict[torch.fx.Node, tuple[torch.fx.Node, torch.fx.Node]] = {}
        for n in self.nodes:
            if (chain := _norm_act_pool_chain(self, n)) is not None:
                self.fused[n] = chain
        # a convolution of the model's input (shared by the members) whose sole reader starts such a chain: where its
        # filters are perturbed, the kernel computes it too and its full-resolution output is never written
        # (convolution node -> GroupNorm node)
        self.conv_fused: dict[torch.fx.Node, torch.fx.Node] = {
            n: gn for gn in self.fused for n in gn.all_input_nodes
            if n.op == "call_module" and type(self.modules[n.target]) is nn.Conv2d and len(n.users) == 1
            and len(n.args) == 1 and not n.kwargs and len(gn.args) == 1
            and isinstance(n.args[0], torch.fx.Node) and n.args[0].op == "placeholder"
        }

    # ---- the frozen bottom: computed once per call, not once per chunk --------------------------------
    def shared_nodes(self, perturbed: frozenset[int]) -> frozenset[torch.fx.Node]:
        """The nodes whose value is the same for every member when only the parameters with ids ``perturbed`` move:
        the input, and every node reading only such values whose own parameters (if any) are not perturbed.

        Empty unless a layer with parameters is among them (a frozen bottom, as in ``model.trainable`` runs):
        only then is there work worth sharing, and full-model runs keep exactly the path they always took."""
        if perturbed not in self._shared:
            shared: set[torch.fx.Node] = set()
            frozen_layer = False
            for n in self.nodes:
                if n.op == "placeholder":
                    shared.add(n)
                elif n.op in ("call_module", "call_function", "call_method") and all(a in shared for a in n.all_input_nodes):
                    params = list(self.modules[n.target].parameters()) if n.op == "call_module" else []
                    if not any(id(p) in perturbed for p in params):
                        shared.add(n)
                        frozen_layer = frozen_layer or bool(params)
            self._shared[perturbed] = frozenset(shared) if frozen_layer else frozenset()
        return self._shared[perturbed]

    def shared_for(self, perturbed: Iterable[torch.Tensor]) -> frozenset[torch.fx.Node]:
        """:meth:`shared_nodes` when the tensors ``perturbed`` move (the engine's call, its plan and the thread rule)."""
        return self.shared_nodes(frozenset(id(p) for p in perturbed))

    def frontier(self, shared: frozenset[torch.fx.Node]) -> frozenset[torch.fx.Node]:
        """The shared nodes a per-member node reads: what :meth:`prefix` keeps for the whole call."""
        return frozenset(n for n in shared if n.op != "placeholder" and any(u not in shared for u in n.users))

    def prefix(self, x: torch.Tensor, shared: frozenset[torch.fx.Node]) -> dict[torch.fx.Node, Value]:
        """The values of the shared nodes (:meth:`shared_nodes`) that a per-member node or the output reads, for input
        ``x``: what :meth:`run` starts from instead of recomputing the frozen bottom in every chunk. The same kernels
        compute them as in :meth:`run`, so the values are the same bits."""
        frontier = self.frontier(shared)
        env: dict[torch.fx.Node, Any] = {}
        for n in self.nodes:
            if n not in shared:
                continue
            if n.op == "placeholder":
                env[n] = Value(x, False)
            else:
                self._step(n, env, 1, {}, None, set())
            for a in self.free_after[n]:
                if a not in frontier:
                    env.pop(a, None)
        return {n: env[n] for n in frontier}

    def top(self, shared: frozenset[torch.fx.Node]) -> tuple[torch.fx.GraphModule, tuple[torch.fx.Node, ...]] | None:
        """The model above a frozen bottom as a module of its own: ``top(*frontier values)`` is ``model(x)``, run by
        the model's own modules (autograd reaches the trained parameters), and the frontier nodes in the order it
        takes them. None when a node above the bottom reads the model's input itself (no split saves anything).

        Why: a backprop client training only the top (the FedSGD / FedAvg twin of a ``model.trainable`` run) can
        start from the feature cache's rows instead of running the frozen bottom every step."""
        if shared not in self._tops:
            frontier = tuple(n for n in self.nodes if n in self.frontier(shared))
            if not frontier or any(a.op == "placeholder" for n in self.nodes if n not in shared for a in n.all_input_nodes):
                self._tops[shared] = None
            else:
                graph = torch.fx.Graph()
                env = {n: graph.placeholder(n.name) for n in frontier}
                for n in self.nodes:
                    if n not in shared:
                        env[n] = graph.node_copy(n, lambda a: env[a])
                self._tops[shared] = (torch.fx.GraphModule(self.gm, graph), frontier)
        return self._tops[shared]

    # ---- the batched forward ------------------------------------------------------------------
    def run(
        self, x: torch.Tensor, P: int, weights: dict[int, torch.Tensor], cols_cache: dict | None = None,
        start: dict[torch.fx.Node, Value] | None = None, shared: frozenset[torch.fx.Node] = frozenset(),
    ) -> Value:  # fmt: skip
        """Forward of P members. ``weights`` maps id(parameter) -> (P, *shape) perturbed copies;
        parameters absent from it are shared by all members. ``cols_cache``: one dict per engine call, in
        which the chunks share what depends on the input alone (a shared-input convolution's im2col).
        ``start``/``shared``: the frozen bottom's values from :meth:`prefix` and its nodes, which are not rerun."""
        env: dict[torch.fx.Node, Any] = dict(start or {})
        result: Any = None
        done: set[torch.fx.Node] = set()  # the activation and pooling nodes of a chain computed fused
        for n in self.nodes:
            if n in done or (n in shared and n.op != "placeholder"):
                pass
            elif n.op == "placeholder":
                env[n] = Value(x, False)
            elif n.op == "output":
                result = env[n.args[0]] if isinstance(n.args[0], torch.fx.Node) else None
            else:
                self._step(n, env, P, weights, cols_cache, done)
            for a in self.free_after[n]:
                env.pop(a, None)
        if not isinstance(result, Value):
            raise Unsupported("model output is not a single tensor")
        return result

    def _step(self, n: torch.fx.Node, env: dict, P: int, weights: dict, cols_cache: dict | None, done: set) -> None:
        """Evaluate node ``n`` (and the fused chain it starts, whose later nodes go into ``done``) into ``env``."""
        if n.op == "call_module" and n in self.conv_fused and (
                fused := self._conv_norm_act_pool(n, env, P, weights, cols_cache)) is not None:
            gn = self.conv_fused[n]
            env[self.fused[gn][1]] = fused
            done.update((gn, *self.fused[gn]))
        elif n.op == "call_module":
            fused = self._norm_act_pool(n, env, P, weights) if n in self.fused else None
            if fused is not None:
                env[self.fused[n][1]] = fused
                done.update(self.fused[n])
            else:
                env[n] = self._module(self.modules[n.target], n, env, P, weights, cols_cache)
        elif n.op == "call_function":
            env[n] = self._function(n, env, P)
        elif n.op == "call_method":
            env[n] = self._method(n, env, P)
        else:
            raise Unsupported(f"fx node kind {n.op}")

    def _norm_act_pool(self, n: torch.fx.Node, env: dict, P: int, weights: dict) -> Value | None:
        """The chain starting at GroupNorm node ``n`` in one compiled pass, or None where the kernel does not
        apply (not built, a shared input, not a float32 CPU tensor): then the nodes run one by one."""
        v = self._arg(n, env)
        if not v.batched or not nap.covers(v.t):
            return None
        m, w, b, act = self._chain_norm(n, P, weights)
        return Value(nap.gn_act_pool2(v.t, m.num_groups * P, w, b, m.eps, act), True)

    def _chain_norm(self, gn: torch.fx.Node, P: int, weights: dict) -> tuple[nn.GroupNorm, Any, Any, int]:
        """(GroupNorm module, its (P, C) affine weight and bias or None, the chain's activation code) for the fused
        chain starting at node ``gn``: member-major, as the (B, P*C, H, W) layout."""
        m = self.modules[gn.target]
        w, _ = stacked(m.weight, P, weights)
        b, _ = stacked(m.bias, P, weights)
        return m, w, b, nap.ACTIVATIONS[type(self.modules[self.fused[gn][0].target])]

    def _conv_norm_act_pool(self, n: torch.fx.Node, env: dict, P: int, weights: dict, cols_cache: dict | None) -> Value | None:
        """Convolution node ``n`` and the GroupNorm -> activation -> pool chain reading it in one compiled pass, or
        None where that does not apply (the input differs per member, the filters are shared, the im2col path
        does not take the convolution, or the kernel does not cover the tensor): then the convolution runs alone."""
        v = self._arg(n, env)
        m = self.modules[n.target]
        w, w_pert = stacked(m.weight, P, weights)
        b, b_pert = stacked(m.bias, P, weights)
        if v.batched or not (w_pert or b_pert) or m.padding_mode != "zeros" or not im2col_fits(m, v.t) or not nap.covers(v.t):
            return None
        cols, Ho, Wo = shared_im2col(m, v.t, cols_cache, aligned=True)
        if Ho < 2 or Wo < 2:
            return None
        gn, gw, gb, act = self._chain_norm(self.conv_fused[n], P, weights)
        out = nap.conv_gn_act_pool2(cols, Ho, Wo, P, w, b, gn.num_groups * P, gw, gb, gn.eps, act)
        return Value(out, True)

    @staticmethod
    def _arg(n: torch.fx.Node, env: dict, i: int = 0) -> Value:
        a = n.args[i] if len(n.args) > i else None
        if not isinstance(a, torch.fx.Node) or not isinstance(env.get(a), Value):
            raise Unsupported(f"node {n.name}: argument {i} is not a tensor produced by the model")
        return env[a]

    def _module(self, m: nn.Module, n: torch.fx.Node, env: dict, P: int, weights: dict, cols_cache: dict | None = None) -> Value:
        if n.kwargs or len(n.args) != 1:
            raise Unsupported(f"module {n.target} called with extra arguments")
        v = self._arg(n, env)
        if type(m) is nn.Conv2d:
            return conv2d(m, v, P, weights, cols_cache)
        if type(m) is nn.Linear:
            return linear(m, v, P, weights)
        if type(m) is nn.GroupNorm:
            return group_norm(m, v, P, weights)
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            return batch_norm(m, v, P, weights)
        if type(m) is nn.Flatten:
            if not v.batched:
                return Value(m(v.t), False)
            if m.start_dim != 1 or m.end_dim != -1:
                raise Unsupported("Flatten other than flatten(1, -1) on per-member values")
            return Value(v.t.flatten(1), True)
        if type(m) is nn.Dropout:
            if m.training and m.p > 0:
                raise Unsupported("dropout in training mode is random per forward")
            return v
        if type(m) is nn.MaxPool2d and is_tiling_pool(m):
            return Value(tiling_max_pool2d(v.t, m.kernel_size), v.batched)
        if type(m) in _IN_PLACE and v.batched and self._sole_owner(n):
            return Value(_IN_PLACE[type(m)](m, v.t), True)
        if type(m) in _PER_CHANNEL_MODULES:
            if getattr(m, "return_indices", False):
                raise Unsupported("pooling with return_indices")
            check_params_shared(m, weights)
            return Value(m(v.t), v.batched)
        raise Unsupported(f"module type {type(m).__name__}")

    def _sole_owner(self, n: torch.fx.Node) -> bool:
        """Whether node ``n`` may overwrite its input: the input is read by ``n`` alone and was produced by
        an op of this program (not the caller's tensor, not a view into another node's value)."""
        a = n.args[0]
        return isinstance(a, torch.fx.Node) and a.op != "placeholder" and len(a.users) == 1 and a in self.fresh

    def _function(self, n: torch.fx.Node, env: dict, P: int) -> Value:
        fn = n.target
        if fn in _PER_CHANNEL_FUNCTIONS:
            v = self._arg(n, env)
            if any(isinstance(a, torch.fx.Node) for a in list(n.args[1:]) + list(n.kwargs.values())):
                raise Unsupported(f"{fn} with tensor arguments")
            return Value(fn(v.t, *n.args[1:], **n.kwargs), v.batched)
        if fn is torch.flatten:
            v = self._arg(n, env)
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            if not v.batched:
                return Value(torch.flatten(v.t, start, end), False)
            if start != 1 or end != -1:
                raise Unsupported("flatten other than flatten(x, 1) on per-member values")
            return Value(v.t.flatten(1), True)
        if fn in _BINARY_FUNCTIONS and not n.kwargs and len(n.args) == 2:
            op = _BINARY_FUNCTIONS[fn]
            a, b = n.args
            if isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node):
                va, vb = env[a], env[b]
                if va.batched == vb.batched:
                    return Value(op(va.t, vb.t), va.batched)
                sa = va.t.shape if not va.batched else logical(va.t, P)
                sb = vb.t.shape if not vb.batched else logical(vb.t, P)
                if sa != sb:
                    raise Unsupported(f"broadcasting {tuple(sa)} with {tuple(sb)}")
                ta = va.t if va.batched else lift(va.t, P)
                tb = vb.t if vb.batched else lift(vb.t, P)
                return Value(op(ta, tb), True)
            if isinstance(a, torch.fx.Node) and isinstance(b, (int, float)):
                return Value(op(env[a].t, b), env[a].batched)
            if isinstance(b, torch.fx.Node) and isinstance(a, (int, float)):
                return Value(op(a, env[b].t), env[b].batched)
        raise Unsupported(f"function {getattr(fn, '__name__', fn)}")

    def _method(self, n: torch.fx.Node, env: dict, P: int) -> Value:
        v = self._arg(n, env)
        if n.target in _PER_CHANNEL_METHODS and len(n.args) == 1 and not n.kwargs:
            return Value(getattr(v.t, n.target)(), v.batched)
        if n.target == "flatten":
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            if not v.batched:
                return Value(v.t.flatten(start, end), False)
            if start == 1 and end == -1:
                return Value(v.t.flatten(1), True)
        raise Unsupported(f"tensor method {n.target}")


def _norm_act_pool_chain(prog: Program, n: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node] | None:
    """(activation node, pooling node) if ``n`` starts GroupNorm -> activation -> 2x2 tiling max-pool, each a plain
    module call and the sole reader of the one before; else None."""
    def plain(node: torch.fx.Node, kinds: tuple[type, ...]) -> bool:
        return node.op == "call_module" and type(prog.modules[node.target]) in kinds and len(node.args) == 1 and not node.kwargs

    def sole_user(node: torch.fx.Node) -> torch.fx.Node | None:
        return next(iter(node.users)) if len(node.users) == 1 else None

    if not plain(n, (nn.GroupNorm,)):
        return None
    act = sole_user(n)
    if act is None or not plain(act, tuple(nap.ACTIVATIONS)):
        return None
    pool = sole_user(act)
    if pool is None or not plain(pool, (nn.MaxPool2d,)):
        return None
    m = prog.modules[pool.target]
    return (act, pool) if is_tiling_pool(m) and _pair(m.kernel_size) == (2, 2) else None
