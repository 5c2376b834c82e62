"""Several local forward-only steps per round, uploaded as S x K scalars (DeComFL/FedKSeed style).

The math (the clients' local steps, the server's replay of the mean trajectory) is ``baffle.trajectory``;
the server side is ``ServerStrategy`` (its seeds, upload length and ``apply_loss_diffs`` know the method),
so the simulator here, the Flower app and its replay transport run the same code. Uploads stay 16 + 4*S*K
bytes; no weights leave a client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from baffle.client import Client
from baffle.config import Config
from baffle.protocol.messages import Upload, plan_nbytes
from baffle.protocol.schemes import forward_passes
from baffle.server.ingest import RoundResult, ingest_uploads
from baffle.trajectory import local_round, step_seeds  # noqa: F401 - step_seeds: part of this method's API

if TYPE_CHECKING:
    import numpy as np

    from baffle.sim.rounds import RoundRunner


def client_round(client: Client, cfg: Config, weights: dict, seeds: np.ndarray, round_idx: int,
                 frozen_sha256: bytes | None = None) -> Upload:
    """A simulated client's round: the plan's weights (the model, or its trainable subset), then S local steps
    (``seeds``: (S, K))."""
    client.load_plan(weights, frozen_sha256)
    return local_round(client, cfg, seeds, round_idx)


class MultiStepZO:
    name: ClassVar[str] = "baffle_multistep"
    backprop: ClassVar[bool] = False
    scalar_uploads: ClassVar[bool] = True

    def run_round(self, runner: RoundRunner, sampled: list[int], all_sampled: list[int], round_idx: int) -> RoundResult:
        fed, c = runner.fed, runner.fed.counters
        cfg, e, f = fed.cfg, fed.cfg.estimator, fed.cfg.federation
        seeds = fed.strategy.seeds(round_idx).reshape(f.local_steps, e.K)
        uploads = runner.postprocess([client_round(fed.clients[i], cfg, runner.weights, seeds, round_idx, runner.frozen)
                                      for i in sampled], round_idx)
        result = ingest_uploads(fed.strategy, uploads, round_idx, set(all_sampled))
        fp = forward_passes(e.K, e.scheme) * f.local_steps
        c.forward_passes += fp * len(sampled)
        c.forward_samples += forward_passes(e.K, e.scheme) * sum(u.num_samples for u in result.valid) * f.local_steps
        c.upload_bytes += sum(u.nbytes for u in uploads)
        return result

    def per_round_costs(self, cfg: Config, n_params: int, n_state_bytes: int) -> tuple[int, int]:
        e, f = cfg.estimator, cfg.federation
        return 16 + 4 * e.K * f.local_steps, forward_passes(e.K, e.scheme) * f.local_steps

    def download_bytes(self, cfg: Config, n_state_bytes: int) -> int:
        return plan_nbytes(cfg.estimator.K * cfg.federation.local_steps, n_state_bytes)  # S x K step seeds
