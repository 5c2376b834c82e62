"""Compare a Flower run of the baffle app with `baffle run` (in-process) on the same config and seeds.

    python scripts/flower_compare.py FLOWER_RESULT_DIR OUT_DIR [--set app-key=value ...]

FLOWER_RESULT_DIR is the ``result-dir`` of a Flower run (``scripts/flower_sim.sh -- -c 'result-dir=...'``)
made with the pyproject ``[tool.flwr.app.config]`` defaults plus the same ``--set`` overrides. This
script runs the in-process engine (``baffle.sim.loop.Simulation``, what ``baffle run`` does) with that
config and as many clients as the Flower run had nodes, then writes OUT_DIR/compare.json and compare.md:
test accuracy at every evaluation of both, and whether the final weights are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

from baffle.records.results import write_json, write_text
from baffle.records.tables import markdown_table, percent, yes_no

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("flower_dir")
    p.add_argument("out_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="app config override (kebab-case)")
    a = p.parse_args(argv)

    from baffle.flower.config import parse_run_config
    from baffle.flower.server_core import weights_digest
    from baffle.sim.loop import Simulation

    run_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    for item in a.set:
        k, v = item.split("=", 1)
        run_config[k] = tomllib.loads(f"v = {v}")["v"]
    flower = json.loads((Path(a.flower_dir) / "result.json").read_text())
    flower_rows = [json.loads(x) for x in (Path(a.flower_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    cfg, _ = parse_run_config(run_config)
    cfg.data.num_clients = flower["num_partitions"]
    out = Path(a.out_dir)
    sim = Simulation(cfg, out / "inprocess", progress=False)
    summary = sim.run()
    inproc_rows = [json.loads(x) for x in (out / "inprocess" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    same = weights_digest(sim.fed.strategy.model.state_dict()).hex() == flower["weights_sha256"]
    result = {
        "config": run_config,
        "num_clients": cfg.data.num_clients,
        "flower": {"mode": flower["mode"], "transport": flower["transport"], "final_test_acc": flower["final_test_acc"],
                   "acc_by_round": {r["round"]: r["test_acc"] for r in flower_rows}, "wall_s": flower["wall_s"]},
        "inprocess": {"final_test_acc": summary["final_test_acc"], "acc_by_round": {r["round"]: r["test_acc"] for r in inproc_rows},
                      "wall_s": summary["wall_s"]},
        "final_weights_bit_identical": same,
    }
    write_json(out / "compare.json", result, indent=2)
    text = compare_md(result)
    write_text(out / "compare.md", text)
    print(text, end="")
    return 0


def compare_md(result: dict) -> str:
    """compare.md from compare.json (whose round keys JSON turned into strings)."""
    flower = {int(r): acc for r, acc in result["flower"]["acc_by_round"].items()}
    inproc = {int(r): acc for r, acc in result["inprocess"]["acc_by_round"].items()}
    table = markdown_table(
        ["round", "Flower test acc", "baffle run test acc"],
        [[r, percent(flower[r], sign=True), percent(inproc.get(r), sign=True, missing="")] for r in sorted(flower)],
        align="right",
    )
    return (f"{table}\n\nFinal weights bit-identical: {yes_no(result['final_weights_bit_identical'])}. Wall time: Flower "
            f"{result['flower']['wall_s']:.0f} s (ServerApp clock), in-process {result['inprocess']['wall_s']:.0f} s.\n")


if __name__ == "__main__":
    sys.exit(main())
