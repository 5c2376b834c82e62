"""FedAvg: each client takes local backprop SGD steps and uploads its weights; the server averages them."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from baffle.config import Config
from baffle.protocol.messages import LOCAL_PLAN_HEADER_BYTES, plan_nbytes
from baffle.server.ingest import RoundResult

if TYPE_CHECKING:
    from baffle.sim.rounds import RoundRunner


class FedAvg:
    name: ClassVar[str] = "fedavg"
    backprop: ClassVar[bool] = True
    scalar_uploads: ClassVar[bool] = False

    def run_round(self, runner: RoundRunner, sampled: list[int], all_sampled: list[int], round_idx: int) -> RoundResult:
        fed, c = runner.fed, runner.fed.counters
        f = fed.cfg.federation
        ups = [fed.clients[i].local_sgd(runner.weights, round_idx, f.local_steps, f.local_lr, runner.frozen) for i in sampled]
        c.backward_passes += f.local_steps * len(sampled)
        c.forward_passes += f.local_steps * len(sampled)
        c.forward_samples += f.local_steps * f.batch_size * len(sampled)
        c.upload_bytes += sum(u.nbytes for u in ups)
        fed.strategy.apply_weights(round_idx, ups)
        return RoundResult(round_idx, len(ups))

    def per_round_costs(self, cfg: Config, n_params: int, n_state_bytes: int) -> tuple[int, int]:
        return 12 + n_state_bytes, cfg.federation.local_steps  # the plan's tensors come back (all, or the trainable subset)

    def download_bytes(self, cfg: Config, n_state_bytes: int) -> int:
        return plan_nbytes(0, n_state_bytes, LOCAL_PLAN_HEADER_BYTES)
