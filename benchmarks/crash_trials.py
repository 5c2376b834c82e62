"""SIGKILL-and-resume trials of ``baffle run`` (the harness is ``baffle.testing.crash``, which
tests/records/test_crash_resume.py runs too): the figures of docs/robustness.md.

Each trial starts ``baffle run`` in a subprocess on the tiny federation, kills it with SIGKILL at random
moments, resumes it until it finishes, and compares the final checkpoint and metrics.jsonl with an
uninterrupted run (see the harness' docstring for what is compared).

    nice -n 10 python benchmarks/crash_trials.py --trials 10   # writes benchmarks/results/crash_trials.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from baffle.records.results import results_dir, write_json
from baffle.testing.crash import run_trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--max-kills", type=int, default=3)
    ap.add_argument("--out", default=str(results_dir(__file__) / "crash_trials.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_trials(Path(tmp), args.trials, args.max_kills)
    write_json(args.out, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
