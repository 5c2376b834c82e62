"""Time real loopback deployments (scripts/deploy_local.sh): wall time, CPU time of all its processes, load.

    python scripts/flower_deploy_timing.py [--out docs/flower/deploy_timing.json]

Cases: (a) the CI test's job, 1 round on 2 nodes, insecure; (b) the slow test's job, 2 rounds on 3 nodes
with TLS + SuperNode authentication + SecAgg+ and node 1 raising in round 1. CPU time is user + sys of
every reaped descendant (getrusage(RUSAGE_CHILDREN)); the load average shows how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baffle.records.results import write_json

REPO = Path(__file__).resolve().parents[1]
TINY = ('data-name="synthetic" data-train-subset=200 data-test-subset=100 estimator-k=4 estimator-engine="loop" '
        'run-eval-every=1 round-timeout-s=120.0 node-wait-s=60.0 model-name="lenet" data-image-size=0 '
        "federation-batch-size=32 optim-warmup=0 optim-ema-decay=0.0 run-threads=1")  # the task docs/flower/ measured
CASES = {
    "ci: 1 round, 2 nodes, insecure": (2, "num-server-rounds=1", []),
    "slow: 2 rounds, 3 nodes, TLS + node auth + SecAgg+, node 1 fails in round 1": (3, "num-server-rounds=2 secure=true secagg-bits=16", ["--auth", "--fail", "1:1"]),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(REPO / "docs" / "flower" / "deploy_timing.json"))
    p.add_argument("--port", type=int, default=19493)
    a = p.parse_args(argv)
    rows = []
    for name, (nodes, cfg, extra) in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result"
            env = dict(os.environ, FLWR_HOME=str(Path(tmp) / "home"), DEPLOY_TIMEOUT="1200")
            cmd = [str(REPO / "scripts" / "deploy_local.sh"), "-n", str(nodes), "-p", str(a.port), *extra, "--", "-c", f'{cfg} {TINY} result-dir="{out}"']
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            load0 = os.getloadavg()[0]
            t0 = time.monotonic()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            wall = time.monotonic() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            res = json.loads((out / "result.json").read_text()) if proc.returncode == 0 else None
            rows.append({"case": name, "exit_code": proc.returncode, "wall_s": round(wall, 1),
                         "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
                         "load_avg_1min_start": load0, "load_avg_1min_end": os.getloadavg()[0],
                         "result": {k: res[k] for k in ("mode", "rounds_done", "failures", "skipped_rounds", "up_bytes_per_msg")} if res else None})
            print(rows[-1], flush=True)
    write_json(a.out, rows, indent=2)
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
