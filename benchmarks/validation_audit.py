"""Audit: do rejected uploads ever touch the global model? Counts injected bad uploads and corruptions
(the harness is ``baffle.testing.audit``, which tests/server/test_validation.py runs in small).

Two identical tiny federations run side by side; one also receives bad uploads of every rejection kind, and
every fifth round only bad ones. A corruption is any round after which the two differ by a single bit in
model, optimizer state or EMA, or a bad upload that was accepted.

    nice -n 10 python benchmarks/validation_audit.py --rounds 60   # writes benchmarks/results/validation_audit.json
"""

from __future__ import annotations

import argparse
import json

import torch

from baffle.records.results import results_dir, write_json
from baffle.testing.audit import audit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--out", default=str(results_dir(__file__) / "validation_audit.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = audit(args.rounds)
    write_json(args.out, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
