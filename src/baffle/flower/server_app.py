"""The Flower ServerApp: ``flwr run .`` starts here (declared in pyproject.toml ``[tool.flwr.app.components]``).

Reads ``[tool.flwr.app.config]`` (see ``baffle.flower.config``), waits for ``min-nodes`` nodes, learns
which partition each holds, then trains with ``BaffleStrategy`` (Message API) or, with ``secure = true``,
with Flower's SecAgg+ workflow. With ``result-dir`` set it writes ``metrics.jsonl`` (one row per
evaluation, as ``baffle run``) and ``result.json`` (final accuracy, bytes per message, failures).
"""

from __future__ import annotations

from logging import INFO

from flwr.app import ArrayRecord, Context
from flwr.common.logger import log  # Flower's logger: these lines appear in `flwr run --stream` / `flwr log`
from flwr.serverapp import Grid, ServerApp

from baffle.flower.config import parse_run_config
from baffle.flower.server_core import ServerCore
from baffle.flower.strategy import BaffleStrategy, refresh_nodes, wait_for_nodes


app = ServerApp()


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
    log(INFO, "baffle: %d nodes, %d partitions; %d rounds, transport=%s, secure=%s",
                len(core.partition_of), core.num_partitions, cfg.run.rounds, opts.transport, opts.secure)
    if opts.secure:
        from baffle.flower.secure import run_secure

        run_secure(grid, context, core)
        mode = "secagg+"
    else:
        strategy = BaffleStrategy(core)
        strategy.start(
            grid,
            ArrayRecord(core.strategy.global_weights()),
            num_rounds=cfg.run.rounds,
            timeout=opts.round_timeout_s,
            evaluate_fn=strategy.evaluate_fn,
        )
        mode = "message-api"
    result = core.finish(mode)
    log(INFO, "baffle: final test accuracy %.4f after %d rounds (%s)", result["final_test_acc"] or float("nan"), result["rounds_done"], mode)
