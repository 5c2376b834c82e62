"""A BAFFLE client: forward passes only, K scalars out.

The client holds its private data and an inference copy of the model. Per round it loads the global
weights (if sent), draws a minibatch, evaluates the loss at the seeded perturbations and answers with an
``Upload`` of K float32 loss differences and its sample count. Nothing else leaves it. Everything runs
under ``torch.inference_mode()``: no autograd graph can be built, no activations are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from baffle import estimator, plan_state
from baffle.engine import Engine, LoopEngine
from baffle.engine.base import LossFn
from baffle.protocol import noise
from baffle.data.dataset import Dataset
from baffle.protocol.sampler import BatchSampler
from baffle.protocol.messages import LocalPlan, RoundPlan, Upload, WeightsUpload
from baffle.reconstruct import reconstruct_on



@dataclass(frozen=True)
class FusionKey:
    """What several clients' steps must share to be answered by one engine pass (``engine.fused``).

    Compared with ``==``, which for the model, the engine and the loss is identity."""

    model: torch.nn.Module
    engine: Engine
    trainable: tuple[str, ...]
    loss_fn: LossFn


def load_weights(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy a whole state dict into a model, refusing anything that does not fit exactly (a plan that may
    carry only the trainable subset is loaded by ``Client.load_plan`` / ``baffle.plan_state.load_plan_state``)."""
    own = model.state_dict()
    missing = set(own) - set(weights)
    unexpected = set(weights) - set(own)
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    with torch.no_grad():
        for name, tensor in own.items():
            src = weights[name]
            if tuple(src.shape) != tuple(tensor.shape):
                raise ValueError(f"weight {name} has shape {tuple(src.shape)}, model expects {tuple(tensor.shape)}")
            tensor.copy_(src)


class Client:
    """One federated client. In the in-process simulator many clients may share one model object:
    each loads the round's weights before working and leaves them bit-identical afterwards."""

    def __init__(
        self,
        client_id: int,
        data: Dataset,
        indices: np.ndarray,
        model: torch.nn.Module,
        *,
        batch_size: int,
        seed: int,
        trainable: Sequence[str] | None = None,
        loss_fn: LossFn = F.cross_entropy,
        engine: Engine | None = None,
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    ):
        if len(indices) == 0:
            raise ValueError(f"client {client_id} has no training samples")
        self.client_id = client_id
        self.data = data
        self.indices = np.asarray(indices)
        self.model = model
        self.trainable = list(trainable or [])
        self.loss_fn = loss_fn
        self.engine: Engine = engine if engine is not None else LoopEngine()
        self.transform = transform
        self.sampler = BatchSampler(self.indices, batch_size, seed)
        self.generator = torch.Generator().manual_seed(seed)  # data augmentation, checkpointed

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.sampler.next_batch()
        x, y = self.data.x[idx], self.data.y[idx]
        if self.transform is not None:
            x = self.transform(x, self.generator)
        return x, y

    def plan_names(self) -> tuple[str, ...]:
        """The state entries a plan to this client carries (``baffle.plan_state.plan_names``)."""
        return plan_state.plan_names(self.model, self.trainable)

    def load_plan(self, weights: Mapping[str, torch.Tensor], frozen_sha256: bytes | None = None, check_frozen: bool = True) -> None:
        """Load a plan's state (all of it, or the trainable subset: ``baffle.plan_state``), refusing a plan whose
        tensors do not match this model or, with ``check_frozen``, whose frozen fingerprint differs from ours."""
        plan_state.load_plan_state(self.model, weights, self.plan_names(), frozen_sha256, check_frozen)

    def step(self, plan: RoundPlan) -> Upload:
        """FedSGD-style round: K loss differences on one minibatch, forward passes only."""
        if plan.weights is not None:
            self.load_plan(plan.weights, plan.frozen_sha256)
        x, y = self.next_batch()
        params = estimator.select_parameters(self.model, self.trainable)
        diffs = self.engine(self.model, params, x, y, plan.seeds, plan.sigma, plan.scheme, self.loss_fn, noise=plan.noise)
        return self.make_upload(plan, diffs, len(y))

    def make_upload(self, plan: RoundPlan, loss_diffs: np.ndarray, num_samples: int) -> Upload:
        """The message answering ``plan``: built in one place for ``step`` and for a fused round."""
        return Upload(client_id=self.client_id, round=plan.round, loss_diffs=loss_diffs, num_samples=num_samples)

    def fusion_key(self) -> FusionKey | None:
        """What this client's ``step`` depends on besides its own minibatch, or None if it may not be fused.

        Only a plain ``Client`` qualifies: a subclass or wrapper may add behaviour to ``step`` (a BP client,
        a failure injector), which a fused pass would silently skip."""
        if type(self) is not Client:
            return None
        return FusionKey(self.model, self.engine, tuple(self.trainable), self.loss_fn)

    def local_train(self, plan: LocalPlan) -> WeightsUpload:
        """Epoch-level round: several local forward-only steps with the client's own seeds and Adam
        (``plan.optimizer="sgd"``: plain SGD, no momentum or weight decay, as FedZO).

        The client reconstructs its own estimates here, and uploads weights, not scalars.
        """
        self.load_plan(plan.weights, plan.frozen_sha256)
        params = estimator.select_parameters(self.model, self.trainable)
        if plan.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD([p for _, p in params], lr=plan.lr)
        else:
            opt = torch.optim.Adam([p for _, p in params], lr=plan.lr, betas=(0.9, 0.99))
        n = estimator.num_elements(params)
        for step in range(plan.local_steps):
            seeds = noise.round_seeds(plan.run_seed, plan.round, plan.num_directions, self.client_id + 1, step + 1)
            x, y = self.next_batch()
            diffs = self.engine(self.model, params, x, y, seeds, plan.sigma, plan.scheme, self.loss_fn, noise=plan.noise)
            grad = reconstruct_on(params[0][1].device, diffs, seeds, plan.sigma, n, noise=plan.noise)
            estimator.write_flat_grad(params, grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
        weights = plan_state.plan_state(self.model, self.plan_names())  # the plan's tensors: the rest did not move
        return WeightsUpload(self.client_id, plan.round, weights, self.num_samples)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
