"""Write (or --check) pyproject.toml's [tool.flwr.app.config] table from baffle.flower.config.

The Flower app's keys and defaults are derived from ``baffle.config.Config()``; this script is the only
writer of that table, so `flwr run .` trains exactly what `baffle run` trains by default. Usage:

    .venv/bin/python scripts/flower_app_config.py          # rewrite the table in place
    .venv/bin/python scripts/flower_app_config.py --check  # exit 1 if it has drifted
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from baffle.flower.config import render_app_config

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def spliced(text: str, table: str) -> str:
    """``text`` with the [tool.flwr.app.config] table (header to the next table header or EOF) replaced."""
    m = re.search(r"^\[tool\.flwr\.app\.config\]\n(?:(?!\[).*\n?)*", text, flags=re.M)
    if m is None:
        return text.rstrip("\n") + "\n\n" + table
    rest = text[m.end():]
    return text[: m.start()] + table + ("\n" + rest if rest else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if the table differs")
    a = p.parse_args(argv)
    text = PYPROJECT.read_text()
    new = spliced(text, render_app_config())
    if a.check:
        if new != text:
            print(f"{PYPROJECT}: [tool.flwr.app.config] differs from baffle.flower.config; run {sys.argv[0]}", file=sys.stderr)
            return 1
        print("pyproject.toml [tool.flwr.app.config] is up to date")
        return 0
    PYPROJECT.write_text(new)
    print(f"wrote [tool.flwr.app.config] to {PYPROJECT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
