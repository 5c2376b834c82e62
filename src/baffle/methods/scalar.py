"""BAFFLE's FedSGD-style round: every sampled client uploads K loss differences for the round's seeds."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from baffle.config import Config
from baffle.protocol.messages import Upload, plan_nbytes
from baffle.protocol.schemes import forward_passes
from baffle.server.ingest import RoundResult, ingest_uploads

if TYPE_CHECKING:
    from baffle.sim.rounds import RoundRunner


class ScalarZO:
    name: ClassVar[str] = "baffle"
    backprop: ClassVar[bool] = False
    scalar_uploads: ClassVar[bool] = True

    def run_round(self, runner: RoundRunner, sampled: list[int], all_sampled: list[int], round_idx: int) -> RoundResult:
        cfg, c = runner.fed.cfg, runner.fed.counters
        uploads = runner.postprocess(runner.client_uploads(sampled, round_idx), round_idx)
        result = ingest_uploads(runner.fed.strategy, uploads, round_idx, set(all_sampled))
        fp = forward_passes(cfg.estimator.K, cfg.estimator.scheme)
        c.forward_passes += fp * len(sampled)
        c.forward_samples += fp * sum(u.num_samples for u in result.valid)
        c.upload_bytes += sum(u.nbytes for u in uploads if isinstance(u, Upload))
        return result

    def per_round_costs(self, cfg: Config, n_params: int, n_state_bytes: int) -> tuple[int, int]:
        e = cfg.estimator
        return 16 + 4 * e.K, forward_passes(e.K, e.scheme)

    def download_bytes(self, cfg: Config, n_state_bytes: int) -> int:
        return plan_nbytes(cfg.estimator.K, n_state_bytes)
