"""What a training method is to the simulator: who its clients are, what one round does, what it costs."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

from baffle.config import Config

if TYPE_CHECKING:
    from baffle.server.ingest import RoundResult
    from baffle.sim.rounds import RoundRunner


class Method(Protocol):
    name: ClassVar[str]
    backprop: ClassVar[bool]  # True: clients run backward passes (the baselines)
    scalar_uploads: ClassVar[bool]  # True: uploads are K loss differences (DP, attacks, ONNX clients apply)

    def run_round(self, runner: RoundRunner, sampled: list[int], all_sampled: list[int], round_idx: int) -> RoundResult:
        """The clients in ``sampled`` (they all answer) do the round's work; the server steps. Costs are
        added to ``runner.fed.counters``."""
        ...

    def per_round_costs(self, cfg: Config, n_params: int, n_state_bytes: int) -> tuple[int, int]:
        """(upload bytes per client per round, forward passes per client per round). ``n_state_bytes``: the
        bytes of the plan's tensors (``ServerStrategy.plan_tensor_nbytes``: the model, or its trainable subset),
        which is what a weights upload carries."""
        ...

    def download_bytes(self, cfg: Config, n_state_bytes: int) -> int:
        """Server -> client bytes per sampled client per round: the round's plan with the model state it ships
        (``n_state_bytes``: ``ServerStrategy.plan_nbytes``, the whole model, or the trainable tensors plus the
        32-byte fingerprint of the frozen rest; ``protocol.messages.plan_nbytes``; Flower's replay transport
        sends K-vectors instead, docs/flower.md)."""
        ...
