"""The paper's epoch-level mode: each client takes local forward-only steps with its own seeds and uploads
its weights (a full model, not scalars); the server averages them. With ``federation.local_optimizer="sgd"``
the local steps are plain ZO-SGD: FedZO (Fang et al. 2022; local ZO-SGD steps, model uploads averaged)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from baffle.config import Config
from baffle.protocol.messages import LOCAL_PLAN_HEADER_BYTES, LocalPlan, plan_nbytes
from baffle.protocol.schemes import forward_passes
from baffle.server.ingest import RoundResult

if TYPE_CHECKING:
    from baffle.sim.rounds import RoundRunner


class LocalZO:
    name: ClassVar[str] = "baffle_local"
    backprop: ClassVar[bool] = False
    scalar_uploads: ClassVar[bool] = False

    def run_round(self, runner: RoundRunner, sampled: list[int], all_sampled: list[int], round_idx: int) -> RoundResult:
        fed, c = runner.fed, runner.fed.counters
        cfg, e, f = fed.cfg, fed.cfg.estimator, fed.cfg.federation
        bs = f.batch_size
        plan = LocalPlan(round_idx, cfg.run.seed, e.K, e.sigma, e.scheme, bs, f.local_steps, f.local_lr, runner.weights, e.noise,
                         f.local_optimizer, runner.frozen)
        ups = [fed.clients[i].local_train(plan) for i in sampled]
        fp = forward_passes(e.K, e.scheme) * f.local_steps
        c.forward_passes += fp * len(sampled)
        c.forward_samples += fp * bs * len(sampled)
        c.upload_bytes += sum(u.nbytes for u in ups)
        fed.strategy.apply_weights(round_idx, ups)
        return RoundResult(round_idx, len(ups))

    def per_round_costs(self, cfg: Config, n_params: int, n_state_bytes: int) -> tuple[int, int]:
        e, f = cfg.estimator, cfg.federation
        return 12 + n_state_bytes, forward_passes(e.K, e.scheme) * f.local_steps  # the plan's tensors come back

    def download_bytes(self, cfg: Config, n_state_bytes: int) -> int:
        return plan_nbytes(0, n_state_bytes, LOCAL_PLAN_HEADER_BYTES)  # the client draws its own seeds from the run seed
