"""The Flower ServerApp: ``flwr run .`` starts here (declared in pyproject.toml ``[tool.flwr.app.components]``).

Reads ``[tool.flwr.app.config]`` (see ``baffle.flower.config``), waits for ``min-nodes`` nodes, learns
which partition each holds, then trains with ``BaffleStrategy`` (Message API) or, with ``secure = true``,
with Flower's SecAgg+ workflow. With ``result-dir`` set it writes the run dir of ``baffle run``
(config.toml, ``metrics.jsonl`` with one row per evaluation, summary.json, curves.png, a checkpoint every
``run-checkpoint-every`` rounds and at the end) plus ``result.json`` (final accuracy, bytes per message,
failures); ``resume = true`` continues that run from its checkpoint (``baffle.flower.resume``).
"""

from __future__ import annotations

from logging import INFO

from typing import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common.logger import log  # Flower's logger: these lines appear in `flwr run --stream` / `flwr log`
from flwr.serverapp import Grid, ServerApp

from baffle.config import ConfigError
from baffle.flower.config import parse_run_config
from baffle.flower.server_core import ServerCore
from baffle.flower.strategy import BaffleStrategy, refresh_nodes, wait_for_nodes


app = ServerApp()


class ResumableStrategy(BaffleStrategy):
    """``BaffleStrategy`` for a run that may have started before this ServerApp: Flower's ``Strategy.start``
    numbers the rounds it runs from 1, so ``offset`` (the rounds already done) is added to each round
    number before the strategy sees it; every round number ``ServerCore`` gets is then the run's own."""

    def __init__(self, core: ServerCore, offset: int):
        super().__init__(core)
        self.offset = offset

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return super().aggregate_train(server_round + self.offset, replies)

    def evaluate_fn(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        return None if server_round == 0 else super().evaluate_fn(server_round + self.offset, arrays)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg, opts = parse_run_config(context.run_config)
    core = ServerCore(cfg, opts)
    wait_for_nodes(grid, opts.min_nodes, opts.node_wait_s)
    refresh_nodes(core, grid, opts.round_timeout_s)
    if not core.partition_of:
        if core.refused:
            raise RuntimeError("every node was refused: " + "; ".join(core.refused.values()))
        raise RuntimeError("no node answered the partition query; are SuperNodes running with --node-config?")
    core.begin()  # the run dir: a new run, or resume=true from its checkpoint
    start = core.start_round
    if start and opts.secure:
        raise ConfigError("resume=true with secure=true: the SecAgg+ workflow counts rounds from 1 and cannot continue "
                          f"a run at round {start} yet; resume it with secure=false or start a new run")
    rounds = f"rounds {start + 1}..{cfg.run.rounds}" if start < cfg.run.rounds else f"all {cfg.run.rounds} rounds already done"
    log(INFO, "baffle: %d nodes, %d partitions; %s, transport=%s, secure=%s",
        len(core.partition_of), core.num_partitions, rounds, opts.transport, opts.secure)
    if opts.secure:
        from baffle.flower.secure import run_secure

        run_secure(grid, context, core)
        mode = "secagg+"
    else:
        strategy = ResumableStrategy(core, start)
        strategy.start(
            grid,
            ArrayRecord(core.strategy.global_weights()),
            num_rounds=cfg.run.rounds - start,
            timeout=opts.round_timeout_s,
            evaluate_fn=strategy.evaluate_fn,
        )
        mode = "message-api"
    result = core.finish(mode)
    log(INFO, "baffle: final test accuracy %.4f after %d rounds (%s)", result["final_test_acc"] or float("nan"), result["rounds_done"], mode)
