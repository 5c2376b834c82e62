"""The server's math, shared by the in-process engine and the Flower app: one implementation.

validate uploads -> aggregate K-vectors -> rebuild g from the round's seeds -> clip -> optimizer step
-> lr schedule -> EMA. Nothing here knows how messages travel.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch

from baffle import aggregation, estimator
from baffle.protocol import noise
from baffle.config import Config
from baffle.messages import RoundPlan, Upload, WeightsUpload
from baffle.shaping import shape_diffs

log = logging.getLogger("baffle")

# Loss differences are O(sigma * |grad| * sqrt(n)); anything this large is a broken or hostile client.
MAX_ABS_LOSS_DIFF = 1e4


# Rejection codes: the per-reason counters in metrics.jsonl use these keys.
REJECT_CODES = (
    "malformed",  # not an Upload / undecodable bytes
    "bad_client_id",
    "unknown_sender",
    "duplicate",
    "bad_round",  # round id of the wrong type
    "stale_round",
    "future_round",
    "wrong_type",  # loss_diffs not a numpy array
    "wrong_dtype",
    "wrong_length",
    "non_finite",
    "magnitude",
    "bad_sample_count",
)


@dataclass
class Rejection:
    client_id: int
    reason: str
    code: str = "malformed"  # one of REJECT_CODES


@dataclass
class RoundResult:
    """What one server step did, for metrics."""

    round: int
    accepted: int
    rejected: list[Rejection] = field(default_factory=list)
    skipped: bool = False
    grad_norm: float = 0.0
    sampled: int = 0
    answered: int = 0  # sampled clients that uploaded in time (the rest failed or timed out)
    failed: int = 0
    timed_out: int = 0
    round_time_s: float = 0.0  # simulated time the server waited (straggler model)


class EMA:
    """Exponential moving average of the model's state, used for evaluation (the paper's guideline)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v, alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def make_optimizer(params: Iterable[torch.nn.Parameter], cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(cfg: Config, round_idx: int) -> float:
    """Multiplier of optim.lr at a (0-based) round: MultiStep milestones, optionally times a cosine."""
    o = cfg.optim
    f = o.gamma ** sum(1 for m in o.milestones if round_idx >= m)
    if o.cosine:
        f *= 0.5 * (1 + math.cos(math.pi * round_idx / cfg.run.rounds))
    if o.warmup and round_idx < o.warmup:  # ZO estimates are noisiest relative to the step early on
        f *= (round_idx + 1) / o.warmup
    return f


class ServerStrategy:
    """Global model + optimizer + EMA, and the update rules of every method."""

    def __init__(self, model: torch.nn.Module, cfg: Config):
        self.model = model
        self.cfg = cfg
        self.params = estimator.select_parameters(model, cfg.model.trainable)
        for name, p in model.named_parameters():
            p.requires_grad_(any(name == n for n, _ in self.params))
        self.n = estimator.num_elements(self.params)
        self.optimizer = make_optimizer([p for _, p in self.params], cfg)
        self.ema = EMA(model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.mask: np.ndarray | None = None  # fixed pruning mask over the flat vector (baffle.pruning)

    def set_mask(self, mask: np.ndarray) -> None:
        """Prune the global model for good: zero masked weights, restart the EMA from the pruned model,
        and from now on reconstruct with masked directions (the clients perturb with the same mask)."""
        from baffle.pruning import apply_mask

        apply_mask(self.params, mask)
        self.mask = np.asarray(mask, dtype=bool)
        if self.ema is not None:
            self.ema = EMA(self.model, self.ema.decay)

    # ---- planning -----------------------------------------------------------------------------
    def seeds(self, round_idx: int) -> np.ndarray:
        e = self.cfg.estimator
        if e.seed_pool:  # reuse a fixed pool of seed_pool directions, K per round in turn (a random subspace)
            return noise.round_seeds(self.cfg.run.seed, round_idx % (e.seed_pool // e.K), e.K)
        return noise.round_seeds(self.cfg.run.seed, round_idx, e.K)

    def plan(self, round_idx: int, send_weights: bool = True) -> RoundPlan:
        e = self.cfg.estimator
        weights = self.global_weights() if send_weights else None
        return RoundPlan(round_idx, self.seeds(round_idx), e.sigma, e.scheme, self.cfg.federation.batch_size, weights)

    def global_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def eval_weights(self) -> dict[str, torch.Tensor]:
        return self.ema.shadow if self.ema is not None else self.model.state_dict()

    # ---- validation: the single point where client uploads enter aggregation ---------------------
    def validate(self, uploads: Sequence[Upload], round_idx: int, expected: set[int] | None = None) -> tuple[list[Upload], list[Rejection]]:
        ok: list[Upload] = []
        rejected: list[Rejection] = []
        seen: set[int] = set()
        K = self.cfg.estimator.K
        for u in uploads:
            problem = upload_check(u, round_idx, K, expected, seen, max_samples=self.cfg.federation.batch_size)
            if problem:
                code, reason = problem
                cid = getattr(u, "client_id", -1)
                log.warning("round %d: rejected upload from client %r [%s]: %s", round_idx, cid, code, reason)
                rejected.append(Rejection(int(cid) if _is_int(cid) else -1, reason, code))
            else:
                seen.add(u.client_id)
                ok.append(u)
        return ok, rejected

    def validate_bytes(
        self, blobs: Sequence[bytes], round_idx: int, expected: set[int] | None = None
    ) -> tuple[list[Upload], list[Rejection]]:
        """Decode wire uploads and validate them; undecodable ones are rejected as "malformed"."""
        from baffle.messages import MessageError

        decoded: list[Upload] = []
        rejected: list[Rejection] = []
        for blob in blobs:
            try:
                decoded.append(Upload.from_bytes(blob))  # a wrong K is reported as wrong_length below
            except MessageError as e:
                log.warning("round %d: rejected undecodable upload [malformed]: %s", round_idx, e)
                rejected.append(Rejection(-1, str(e), "malformed"))
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
        weights = np.array([u.num_samples for u in uploads], dtype=np.float64)
        return aggregation.aggregate(vectors, weights, f.aggregator, f.trim_fraction)

    def apply_loss_diffs(self, round_idx: int, mean_diffs: np.ndarray) -> float:
        """Rebuild g from the aggregated K-vector and this round's seeds, then step."""
        e = self.cfg.estimator
        if (e.baseline, e.shaping) != ("none", "none"):  # server-side variance reduction (baffle.shaping)
            mean_diffs = shape_diffs(mean_diffs, e.baseline, e.shaping)
        g = estimator.reconstruct(mean_diffs, self.seeds(round_idx), self.cfg.estimator.sigma, self.n)
        if self.mask is not None:  # clients perturbed with mask * eps_k: reconstruct with the same directions
            g = g * self.mask
        return self.apply_gradient(round_idx, g)

    def apply_gradient(self, round_idx: int, flat_grad: np.ndarray | torch.Tensor) -> float:
        flat = torch.as_tensor(flat_grad, dtype=torch.float32)
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
        """FedAvg-style: the global model becomes the sample-weighted average of the clients' weights."""
        total = sum(u.num_samples for u in uploads)
        avg = {k: sum(u.weights[k].double() * (u.num_samples / total) for u in uploads) for k in uploads[0].weights}
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
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
        return {
            "model": copy.deepcopy(self.model.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError("checkpoint has no EMA state but optim.ema_decay > 0")
            self.ema.load_state_dict(state["ema"])


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def upload_problem(
    u: object, round_idx: int, K: int, expected: set[int] | None, seen: set[int], max_samples: int | None = None
) -> str | None:
    """Why an upload must be rejected, or None. Checked before anything touches the model."""
    problem = upload_check(u, round_idx, K, expected, seen, max_samples)
    return problem[1] if problem else None


def upload_check(
    u: object, round_idx: int, K: int, expected: set[int] | None, seen: set[int], max_samples: int | None = None
) -> tuple[str, str] | None:
    """(code, human-readable reason) for a bad upload, or None; codes are REJECT_CODES.

    ``max_samples`` (the round's batch size) bounds the claimed sample count: the count weights the mean,
    so an unbounded claim would let one client outvote all the others.
    """
    if not isinstance(u, Upload):
        return "malformed", f"not an Upload message ({type(u).__name__})"
    if not _is_int(u.client_id) or u.client_id < 0:
        return "bad_client_id", f"invalid client id {u.client_id!r}"
    if expected is not None and u.client_id not in expected:
        return "unknown_sender", f"unknown or unsampled sender {u.client_id}"
    if u.client_id in seen:
        return "duplicate", f"duplicate upload from client {u.client_id}"
    if not _is_int(u.round):
        return "bad_round", f"round id {u.round!r} is not an integer"
    if u.round != round_idx:
        code = "stale_round" if u.round < round_idx else "future_round"
        return code, f"{code.split('_')[0]} round id {u.round} (current round {round_idx})"
    arr = u.loss_diffs
    if not isinstance(arr, np.ndarray):
        return "wrong_type", f"loss_diffs is a {type(arr).__name__}, not a numpy array"
    if arr.dtype != np.float32:
        return "wrong_dtype", f"loss_diffs dtype {arr.dtype}, expected float32"
    if arr.shape != (K,):
        return "wrong_length", f"loss_diffs has shape {arr.shape}, expected ({K},)"
    if not np.isfinite(arr).all():
        return "non_finite", "loss_diffs contains NaN or inf"
    if np.abs(arr).max(initial=0.0) > MAX_ABS_LOSS_DIFF:
        return "magnitude", f"loss_diffs magnitude {float(np.abs(arr).max()):.3g} exceeds {MAX_ABS_LOSS_DIFF:g}"
    if not _is_int(u.num_samples) or u.num_samples < 1 or (max_samples is not None and u.num_samples > max_samples):
        bound = f" (round batch size {max_samples})" if max_samples is not None else ""
        return "bad_sample_count", f"invalid sample count {u.num_samples!r}{bound}"
    return None
