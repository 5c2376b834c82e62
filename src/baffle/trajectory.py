"""Local forward-only trajectories from seeds and scalars: ``run.method = "baffle_multistep"``'s math.

A client takes S local ZO-SGD steps: at step s it evaluates K loss differences along the round's step-s
seeds at its CURRENT weights, rebuilds its own estimate g_s and moves w <- w - local_lr * g_s; it uploads
only the S x K loss differences. The rebuilt estimate is linear in the scalars and the seeds are the same
for every client, so the sample-weighted mean of the clients' weight deltas is the delta of ONE trajectory
driven by the mean S x K vector: the server (and every Flower replica that replays the server) aggregates
the uploads like any K-vector (secure aggregation and central DP included) and replays that trajectory.
One implementation of the step (``local_step``) for the client, the server and the replicas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from baffle import estimator
from baffle.protocol import noise as directions
from baffle.protocol.messages import Upload
from baffle.reconstruct import reconstruct

if TYPE_CHECKING:
    from baffle.client import Client
    from baffle.config import Config


def steps_per_round(cfg: Config) -> int:
    """S: the local steps (minibatches, K-vectors uploaded) of one client round; 1 for every method but baffle_multistep."""
    return cfg.federation.local_steps if cfg.run.method == "baffle_multistep" else 1


def step_seeds(run_seed: int, round_idx: int, K: int, steps: int) -> np.ndarray:
    """(S, K) uint64: the seeds of every local step of a round, shared by all clients.

    Step s of round r uses ``round_seeds(run_seed, r, K, 0, s + 1)`` (the 0 keeps the stream apart from
    ``baffle_local``'s private per-client seeds, which start at client_id + 1)."""
    return np.stack([directions.round_seeds(run_seed, round_idx, K, 0, s + 1) for s in range(steps)])


def local_step(w: np.ndarray, diffs: np.ndarray, seeds: np.ndarray, sigma: float, lr: float, noise: str) -> np.ndarray:
    """One local ZO-SGD step on the flat float32 weights."""
    g = reconstruct(diffs, seeds, sigma, len(w), noise=noise)
    return w - np.float32(lr) * g


def flat_weights(params: list[tuple[str, torch.nn.Parameter]]) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for _, p in params]).cpu().numpy().astype(np.float32, copy=True)


@torch.no_grad()
def write_weights(params: list[tuple[str, torch.nn.Parameter]], w: np.ndarray) -> None:
    flat, offset = torch.from_numpy(w), 0
    for _, p in params:
        p.copy_(flat[offset : offset + p.numel()].view_as(p).to(p.device))
        offset += p.numel()


def local_round(client: Client, cfg: Config, seeds: np.ndarray, round_idx: int) -> Upload:
    """What a client does in one round, from the weights its model holds: S local steps, S x K scalars out
    (``seeds``: (S, K)). The model is left at the end of the client's trajectory."""
    e, f = cfg.estimator, cfg.federation
    params = estimator.select_parameters(client.model, client.trainable)
    w = flat_weights(params)
    diffs = np.empty(seeds.shape, dtype=np.float32)
    n_samples = 0
    for s in range(len(seeds)):
        x, y = client.next_batch()
        n_samples = max(n_samples, len(y))
        diffs[s] = client.engine(client.model, params, x, y, seeds[s], e.sigma, e.scheme, client.loss_fn, noise=e.noise)
        w = local_step(w, diffs[s], seeds[s], e.sigma, f.local_lr, e.noise)
        write_weights(params, w)
    return Upload(client.client_id, round_idx, diffs.reshape(-1), n_samples)


def pseudo_gradient(w0: np.ndarray, mean_diffs: np.ndarray, seeds: np.ndarray, cfg: Config) -> np.ndarray:
    """w0 minus the end of the trajectory the (aggregated) S x K vector drives from w0: what the server's
    optimizer steps on (``optim.name=sgd, optim.lr=1``, no momentum: plain FedZO averaging; Adam: FedAdam)."""
    e = cfg.estimator
    d = np.asarray(mean_diffs, dtype=np.float32).reshape(seeds.shape)
    w = w0
    for s in range(len(seeds)):
        w = local_step(w, d[s], seeds[s], e.sigma, cfg.federation.local_lr, e.noise)
    return w0 - w
