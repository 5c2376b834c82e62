"""Several local forward-only steps per round, uploaded as S x K scalars (DeComFL/FedKSeed style).

A client takes S local ZO-SGD steps: at step s it evaluates K loss differences along the round's step-s
seeds at its CURRENT weights, rebuilds its own estimate g_s and moves w <- w - local_lr * g_s. It uploads
only the S x K loss differences. The server holds the same seeds and the same start weights, so it replays
every client's trajectory exactly (same ``local_step`` on the same float32 numbers), averages the clients'
weight deltas by sample count and hands the negative mean delta to its optimizer as a pseudo-gradient
(``optim.name=sgd, optim.lr=1, momentum 0`` is plain FedZO averaging; the default Adam makes it FedAdam).
Uploads stay 16 + 4*S*K bytes; no weights leave a client.

Seeds: step s of round r uses ``round_seeds(run_seed, r, K, 0, s + 1)`` for every client (the 0 keeps the
stream apart from ``baffle_local``'s private per-client seeds, which start at client_id + 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from baffle import estimator
from baffle.client import Client, load_weights
from baffle.config import Config
from baffle.protocol import noise as directions
from baffle.protocol.messages import Upload
from baffle.protocol.schemes import forward_passes
from baffle.reconstruct import reconstruct
from baffle.server.ingest import RoundResult, ingest_uploads
from baffle.server.strategy import ServerStrategy

if TYPE_CHECKING:
    from baffle.sim.rounds import RoundRunner


def step_seeds(run_seed: int, round_idx: int, K: int, steps: int) -> np.ndarray:
    """(S, K) uint64: the seeds of every local step of a round, shared by all clients."""
    return np.stack([directions.round_seeds(run_seed, round_idx, K, 0, s + 1) for s in range(steps)])


def local_step(w: np.ndarray, diffs: np.ndarray, seeds: np.ndarray, sigma: float, lr: float, noise: str) -> np.ndarray:
    """One local ZO-SGD step on the flat float32 weights: the ONE implementation client and server run."""
    g = reconstruct(diffs, seeds, sigma, len(w), noise=noise)
    return w - np.float32(lr) * g


def _flat(params: list[tuple[str, torch.nn.Parameter]]) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for _, p in params]).cpu().numpy().astype(np.float32, copy=True)


@torch.no_grad()
def _write(params: list[tuple[str, torch.nn.Parameter]], w: np.ndarray) -> None:
    flat, offset = torch.from_numpy(w), 0
    for _, p in params:
        p.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()


def client_round(client: Client, cfg: Config, weights: dict, seeds: np.ndarray, round_idx: int) -> Upload:
    """What a client does in one round: S local steps from the global weights, S x K scalars out."""
    e, f = cfg.estimator, cfg.federation
    load_weights(client.model, weights)
    params = estimator.select_parameters(client.model, client.trainable)
    w = _flat(params)
    diffs = np.empty(seeds.shape, dtype=np.float32)
    n_samples = 0
    for s in range(len(seeds)):
        x, y = client.next_batch()
        n_samples = max(n_samples, len(y))
        diffs[s] = client.engine(client.model, params, x, y, seeds[s], e.sigma, e.scheme, client.loss_fn, noise=e.noise)
        w = local_step(w, diffs[s], seeds[s], e.sigma, f.local_lr, e.noise)
        _write(params, w)
    return Upload(client.client_id, round_idx, diffs.reshape(-1), n_samples)


def replay_and_step(strategy: ServerStrategy, round_idx: int, uploads: list[Upload], seeds: np.ndarray) -> float:
    """Rebuild every valid client's trajectory from its scalars, average the deltas, step the server."""
    cfg = strategy.cfg
    e, f = cfg.estimator, cfg.federation
    w0 = _flat(strategy.params)
    total = np.zeros_like(w0, dtype=np.float64)
    weight = sum(u.num_samples for u in uploads)
    for u in uploads:
        w = w0
        for s, d in enumerate(u.loss_diffs.reshape(seeds.shape)):
            w = local_step(w, d, seeds[s], e.sigma, f.local_lr, e.noise)
        total += (u.num_samples / weight) * (w - w0).astype(np.float64)
    return strategy.apply_gradient(round_idx, (-total).astype(np.float32))


class MultiStepZO:
    name: ClassVar[str] = "baffle_multistep"
    backprop: ClassVar[bool] = False
    scalar_uploads: ClassVar[bool] = True

    def run_round(self, runner: RoundRunner, sampled: list[int], all_sampled: list[int], round_idx: int) -> RoundResult:
        fed, c = runner.fed, runner.fed.counters
        cfg, e, f = fed.cfg, fed.cfg.estimator, fed.cfg.federation
        seeds = step_seeds(cfg.run.seed, round_idx, e.K, f.local_steps)
        uploads = [client_round(fed.clients[i], cfg, runner.weights, seeds, round_idx) for i in sampled]
        result = ingest_uploads(fed.strategy, uploads, round_idx, set(all_sampled), length=seeds.size,
                                step=lambda ok: replay_and_step(fed.strategy, round_idx, ok, seeds))
        fp = forward_passes(e.K, e.scheme) * f.local_steps
        c.forward_passes += fp * len(sampled)
        c.forward_samples += forward_passes(e.K, e.scheme) * sum(u.num_samples for u in result.valid) * f.local_steps
        c.upload_bytes += sum(u.nbytes for u in uploads)
        return result

    def per_round_costs(self, cfg: Config, n_params: int, n_state_bytes: int) -> tuple[int, int]:
        e, f = cfg.estimator, cfg.federation
        return 16 + 4 * e.K * f.local_steps, forward_passes(e.K, e.scheme) * f.local_steps
