"""``ServerStrategy``: the global model, its optimizer and EMA, and the update rule of every method.

aggregate K-vectors -> rebuild g from the round's seeds -> clip -> optimizer step -> lr schedule -> EMA.
Shared by the in-process simulator and the Flower app: one implementation.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch

from baffle import estimator, plan_state, trajectory
from baffle.config import Config
from baffle.protocol.messages import RoundPlan, Upload, WeightsUpload
from baffle.protocol import noise
from baffle.server import aggregation
from baffle.server.trust import TrustAggregator
from baffle.server.optim import EMA, lr_factor, make_optimizer
from baffle.server.validation import Rejection, decode_uploads, validate_uploads
from baffle.shaping import shape_diffs
from baffle.reconstruct import reconstruct_on


class ServerStrategy:
    """Global model + optimizer + EMA, and the update rules of every method."""

    def __init__(self, model: torch.nn.Module, cfg: Config):
        self.model = model
        self.cfg = cfg
        self.params = estimator.select_parameters(model, cfg.model.trainable)
        self.device = self.params[0][1].device  # the run's device (the factory moved the model there)
        for name, p in model.named_parameters():
            p.requires_grad_(any(name == n for n, _ in self.params))
        self.n = estimator.num_elements(self.params)
        self.optimizer = make_optimizer([p for _, p in self.params], cfg)
        # the entries of the state that can change (the trainable subset and persistent buffers, or all of it):
        # a checkpoint stores only these of the model, plus the fingerprint of the frozen rest
        self.state_names: tuple[str, ...] = plan_state.plan_names(model, cfg.model.trainable)
        self.ema = EMA(model, cfg.optim.ema_decay, cfg.optim.ema_warmup, self.state_names) if cfg.optim.ema_decay > 0 else None
        self.mask: np.ndarray | None = None  # fixed pruning mask over the flat vector (baffle.pruning)
        self.trust: TrustAggregator | None = None  # federation.aggregator='fltrust' (baffle.server.trust)
        # what a plan carries (baffle.plan_state): the trainable tensors when a subset trains, else the state dict.
        # ONNX Runtime clients (federation.onnx_clients) hold no weights of their own, so a mixed run ships everything
        subset = cfg.model.trainable if cfg.federation.onnx_clients == 0 else None
        self.plan_names: tuple[str, ...] = plan_state.plan_names(model, subset)

    def set_mask(self, mask: np.ndarray) -> None:
        """Prune the global model for good: zero masked weights, restart the EMA from the pruned model,
        and from now on reconstruct with masked directions (the clients perturb with the same mask)."""
        from baffle.pruning import apply_mask

        apply_mask(self.params, mask)
        self.mask = np.asarray(mask, dtype=bool)
        if self.ema is not None:
            self.ema = EMA(self.model, self.ema.decay, self.ema.warmup, self.state_names)

    def set_trust(self, trust: TrustAggregator) -> None:
        self.trust = trust

    # ---- planning -----------------------------------------------------------------------------
    @property
    def local_steps(self) -> int:
        """S: the K-vectors per upload (``run.method="baffle_multistep"``'s local steps; 1 for every other method)."""
        return trajectory.steps_per_round(self.cfg)

    @property
    def upload_length(self) -> int:
        """Scalars per upload: S x K."""
        return self.local_steps * self.cfg.estimator.K

    def seeds(self, round_idx: int) -> np.ndarray:
        """The round's K seeds (baffle_multistep: its S x K step seeds, flat, step by step)."""
        e = self.cfg.estimator
        if self.cfg.run.method == "baffle_multistep":
            return trajectory.step_seeds(self.cfg.run.seed, round_idx, e.K, self.local_steps).reshape(-1)
        if e.seed_pool:  # reuse a fixed pool of seed_pool directions, K per round in turn (a random subspace)
            return noise.round_seeds(self.cfg.run.seed, round_idx % (e.seed_pool // e.K), e.K)
        return noise.round_seeds(self.cfg.run.seed, round_idx, e.K)

    def plan(self, round_idx: int, send_weights: bool = True) -> RoundPlan:
        e = self.cfg.estimator
        weights = self.plan_weights() if send_weights else None
        frozen = self.frozen_sha256() if send_weights else None
        return RoundPlan(round_idx, self.seeds(round_idx), e.sigma, e.scheme, self.cfg.federation.batch_size, weights, e.noise,
                         frozen)

    def global_weights(self) -> dict[str, torch.Tensor]:
        """The whole state dict (checkpoints, evaluation, clients without a model of their own)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def plan_weights(self) -> dict[str, torch.Tensor]:
        """What a plan ships of the model: the tensors that can change (``plan_names``), detached copies."""
        return plan_state.plan_state(self.model, self.plan_names)

    def frozen_sha256(self) -> bytes | None:
        """The fingerprint of the state a plan leaves out (None when it ships everything); cached."""
        return plan_state.frozen_sha256(self.model, self.plan_names)

    def plan_nbytes(self) -> int:
        """Bytes of the model state one weight-carrying plan ships (its tensors + the frozen fingerprint)."""
        return plan_state.plan_nbytes_of(self.model, self.plan_names)

    def plan_tensor_nbytes(self) -> int:
        """Bytes of the plan's tensors alone: what a weights upload (fedavg, baffle_local) carries back."""
        return plan_state.tensor_nbytes(self.model, self.plan_names)

    def eval_weights(self) -> dict[str, torch.Tensor]:
        return self.ema.shadow if self.ema is not None else self.model.state_dict()

    # ---- validation: the single point where client uploads enter aggregation ---------------------
    def validate(
        self, uploads: Sequence[Upload], round_idx: int, expected: set[int] | None = None, length: int | None = None
    ) -> tuple[list[Upload], list[Rejection]]:
        """``length``: scalars per upload (K unless a method uploads more, e.g. S x K local steps)."""
        K = self.upload_length if length is None else length
        return validate_uploads(uploads, round_idx, K, expected, max_samples=self.cfg.federation.batch_size)

    def validate_bytes(
        self, blobs: Sequence[bytes], round_idx: int, expected: set[int] | None = None
    ) -> tuple[list[Upload], list[Rejection]]:
        """Decode wire uploads and validate them; undecodable ones are rejected as "malformed"."""
        decoded, rejected = decode_uploads(blobs, round_idx)
        ok, bad = self.validate(decoded, round_idx, expected)
        return ok, rejected + bad

    # ---- updates ------------------------------------------------------------------------------
    def aggregate_diffs(self, uploads: Sequence[Upload], round_idx: int | None = None) -> np.ndarray:
        """The round's K-vector from VALIDATED uploads (central DP, when on, clips, sums and noises here)."""
        f, p = self.cfg.federation, self.cfg.privacy
        if not uploads:
            raise ValueError("aggregate_diffs needs at least one validated upload (skip the round when none is valid)")
        vectors = np.stack([np.asarray(u.loss_diffs, dtype=np.float32) for u in uploads])
        if p.mode == "central":
            if round_idx is None:  # the noise is seeded per round; reusing one seed would correlate it
                raise ValueError("privacy.mode='central' needs aggregate_diffs(uploads, round_idx)")
            from baffle import privacy

            return privacy.central_mean(vectors, p.clip, p.noise_multiplier, self.cfg.run.seed, round_idx)
        if f.aggregator == "fltrust":  # scored against the server's own K-vector (baffle.server.trust)
            if self.trust is None:
                raise ValueError("federation.aggregator='fltrust' needs a root reference (ServerStrategy.set_trust)")
            return self.trust.aggregate(vectors, [int(u.client_id) for u in uploads], self.seeds(round_idx or 0))
        weights = np.array([u.num_samples for u in uploads], dtype=np.float64)
        return aggregation.aggregate(vectors, weights, f.aggregator, f.trim_fraction)

    def apply_loss_diffs(self, round_idx: int, mean_diffs: np.ndarray) -> float:
        """Rebuild g from the aggregated K-vector and this round's seeds, then step (baffle_multistep: step on
        the mean trajectory the aggregated S x K vector drives, ``baffle.trajectory``)."""
        e = self.cfg.estimator
        if self.cfg.run.method == "baffle_multistep":
            seeds = self.seeds(round_idx).reshape(self.local_steps, e.K)
            return self.apply_gradient(round_idx, trajectory.pseudo_gradient(trajectory.flat_weights(self.params), mean_diffs, seeds, self.cfg))
        if (e.baseline, e.shaping) != ("none", "none"):  # server-side variance reduction (baffle.shaping)
            mean_diffs = shape_diffs(mean_diffs, e.baseline, e.shaping)
        g = reconstruct_on(self.device, mean_diffs, self.seeds(round_idx), e.sigma, self.n, noise=e.noise)
        if self.mask is not None:  # clients perturbed with mask * eps_k: reconstruct with the same directions
            g = g * torch.from_numpy(self.mask).to(self.device)
        return self.apply_gradient(round_idx, g)

    def apply_gradient(self, round_idx: int, flat_grad: np.ndarray | torch.Tensor) -> float:
        flat = torch.as_tensor(flat_grad, dtype=torch.float32, device=self.device)
        if not torch.isfinite(flat).all():
            raise FloatingPointError(f"round {round_idx}: non-finite gradient estimate; model left untouched")
        estimator.write_flat_grad(self.params, flat)
        grads = [p for _, p in self.params]
        if self.cfg.optim.clip > 0:
            torch.nn.utils.clip_grad_norm_(grads, self.cfg.optim.clip, norm_type=math.inf)
        norm = float(torch.linalg.vector_norm(flat))
        self._set_lr(round_idx)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._after_step(round_idx)
        return norm

    def apply_weights(self, round_idx: int, uploads: Sequence[WeightsUpload]) -> None:
        """FedAvg-style: the plan's tensors (``plan_names``: the model, or its trainable subset) become the
        sample-weighted average of the clients'; the frozen rest is never touched (averaging it gave it back
        bit for bit anyway). An upload that does not carry exactly those tensors is refused, naming one."""
        for u in uploads:
            plan_state.check_plan_state(self.model, u.weights, self.plan_names)
        total = sum(u.num_samples for u in uploads)
        avg = {k: sum(u.weights[k].double() * (u.num_samples / total) for u in uploads) for k in self.plan_names}
        with torch.no_grad():
            state = self.model.state_dict()
            for k in self.plan_names:
                v = state[k]
                v.copy_(avg[k].to(v.dtype))
        self._after_step(round_idx)

    def _set_lr(self, round_idx: int) -> None:
        lr = self.cfg.optim.lr * lr_factor(self.cfg, round_idx)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _after_step(self, round_idx: int) -> None:
        if self.ema is not None and (round_idx + 1) % self.cfg.optim.ema_every == 0:
            self.ema.update(self.model)

    # ---- persistence --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a checkpoint keeps: the model's ``state_names`` (all of it, or the trainable subset plus
        ``frozen_sha256``, the hex SHA-256 of the frozen rest, which resume rebuilds from the config and checks),
        the optimizer, the EMA (its shadow of the same entries: its frozen rest is the frozen model's, exactly),
        the trust scores. MiniLM head only: a few kB instead of 180 MB."""
        state = self.model.state_dict()
        frozen = plan_state.frozen_sha256(self.model, self.state_names)
        return {
            "model": {k: state[k].detach().clone() for k in self.state_names},
            **({"frozen_sha256": frozen.hex()} if frozen is not None else {}),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            **({"trust": self.trust.state_dict()} if self.trust is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s dict, or a whole-model one (checkpoints written before subsets were saved
        alone). A subset state is refused (ValueError, one line) unless it holds exactly ``state_names`` and
        the fingerprint of the frozen rest matches this model's: resuming on another base model would silently
        train a different network."""
        if "frozen_sha256" in state:
            self._load_subset(state["model"], state["frozen_sha256"])
        else:
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError("checkpoint has no EMA state but optim.ema_decay > 0")
            self.ema.load_state_dict(state["ema"], self.model)
        if self.trust is not None:
            if "trust" not in state:
                raise ValueError("checkpoint has no trust state but federation.aggregator='fltrust'")
            self.trust.load_state_dict(state["trust"])

    def _load_subset(self, weights: dict, frozen_hex: object) -> None:
        if (frozen := plan_state.frozen_from_hex(frozen_hex)) is None:
            raise ValueError("checkpoint has a malformed frozen_sha256 (64 hex digits expected)")
        if (why := plan_state.frozen_mismatch(self.model, self.state_names, frozen)) is not None:
            raise ValueError(f"checkpoint {why}")
        if set(weights) != set(self.state_names):
            extra, missing = sorted(set(weights) - set(self.state_names)), sorted(set(self.state_names) - set(weights))
            raise ValueError(f"checkpoint stores other trainable tensors than model.trainable selects "
                             f"(extra {extra[:3]}, missing {missing[:3]})")
        plan_state.load_plan_state(self.model, weights, self.state_names, check_fingerprint=False)
