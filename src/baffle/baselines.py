"""Backpropagation baselines in the same harness: FedSGD and FedAvg with autograd.

Same data, partitions, models, server optimizer, EMA and metrics as BAFFLE, so every forward-only result
has its backprop twin one flag away (``--set run.method=fedsgd`` or ``fedavg``). These clients upload a
full gradient or full weights (4n bytes), which is what BAFFLE's K scalars are compared against.
Forward and backward run on the model's device (``run.device``); minibatches are drawn on the CPU (the
sampler and augmentation streams are device-independent) and moved there.
"""

from __future__ import annotations

import numpy as np
import torch

from baffle import estimator, plan_state
from baffle.client import Client
from baffle.protocol.messages import WeightsUpload


class BPClient(Client):
    """A conventional client that runs forward + backward."""

    def gradient(self, weights: dict[str, torch.Tensor] | None, frozen_sha256: bytes | None = None) -> tuple[np.ndarray, int]:
        """FedSGD: the autograd gradient of one minibatch, flattened over the trainable parameters (``weights``:
        the plan's state, or None when the model already holds the round's weights)."""
        if weights is not None:
            self.load_plan(weights, frozen_sha256)
        params = estimator.select_parameters(self.model, self.trainable)
        x, y = self._device_batch(params[0][1].device)
        self.model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = self.loss_fn(self._logits(x, [p for _, p in params]), y)
            grads = torch.autograd.grad(loss, [p for _, p in params])
        return torch.cat([g.reshape(-1) for g in grads]).cpu().numpy(), len(y)

    def local_sgd(self, weights: dict[str, torch.Tensor], round_idx: int, steps: int, lr: float,
                  frozen_sha256: bytes | None = None) -> WeightsUpload:
        """FedAvg: ``steps`` local SGD steps (momentum 0.9) from the plan's weights; the plan's tensors come back
        (the whole model, or the trainable subset: only those have gradients, the rest cannot move)."""
        self.load_plan(weights, frozen_sha256)
        params = [p for _, p in estimator.select_parameters(self.model, self.trainable)]
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        with torch.enable_grad():
            for _ in range(steps):
                x, y = self._device_batch(params[0].device)
                # gradients of the trained tensors only: backward() would also fill those of every frozen
                # parameter (a head-only MiniLM step backpropagated through all 22.7M weights for nothing)
                grads = torch.autograd.grad(self.loss_fn(self._logits(x, params), y), params)
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
        out = plan_state.plan_state(self.model, self.plan_names())
        return WeightsUpload(self.client_id, round_idx, out, self.num_samples)

    def _logits(self, x: torch.Tensor, trained: list[torch.Tensor]) -> torch.Tensor:
        """``model(x)``; where only a top trains over a frozen bottom and the engine keeps the bottom's rows
        (``BatchedEngine.frozen_top``, ``estimator.feature_cache_mb``), from those rows: autograd then runs only above
        the bottom, and each sample goes through the bottom once per run instead of once per step."""
        split = getattr(self.engine, "frozen_top", None)
        got = split(self.model, trained, x) if split is not None and self.trainable else None
        if got is None:
            return self.model(x)
        top, inputs = got
        return top(*inputs)

    def _device_batch(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.next_batch()
        return x.to(device), y.to(device)
