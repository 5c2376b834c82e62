"""The backprop twin of BAFFLE's round: each client uploads its minibatch gradient (a model-sized vector)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from baffle.config import Config
from baffle.protocol.messages import plan_nbytes
from baffle.server.ingest import RoundResult

if TYPE_CHECKING:
    from baffle.sim.rounds import RoundRunner


class FedSGD:
    name: ClassVar[str] = "fedsgd"
    backprop: ClassVar[bool] = True
    scalar_uploads: ClassVar[bool] = False

    def run_round(self, runner: RoundRunner, sampled: list[int], all_sampled: list[int], round_idx: int) -> RoundResult:
        fed, c = runner.fed, runner.fed.counters
        grads, counts = zip(*(fed.clients[i].gradient(None) for i in sampled))
        w = np.array(counts, dtype=np.float64) / sum(counts)
        g = (w @ np.stack(grads).astype(np.float64)).astype(np.float32)
        c.forward_passes += len(sampled)
        c.backward_passes += len(sampled)
        c.forward_samples += sum(counts)
        c.upload_bytes += len(sampled) * (16 + 4 * fed.strategy.n)
        return RoundResult(round_idx, len(sampled), grad_norm=fed.strategy.apply_gradient(round_idx, g))

    def per_round_costs(self, cfg: Config, n_params: int, n_state_bytes: int) -> tuple[int, int]:
        return 16 + 4 * n_params, 1

    def download_bytes(self, cfg: Config, n_state_bytes: int) -> int:
        return plan_nbytes(0, n_state_bytes)  # the weights and the round: no directions
