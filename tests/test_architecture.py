"""The package's shape, as docs/architecture.md draws it: layers import downward only, no import cycles,
small modules, and one round ingest."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    mods = {}
    for p in (SRC / "baffle").rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


MODULES = _modules()


def _imports(name: str, path: Path, top_level_only: bool = True) -> set[str]:
    """baffle modules imported by ``name`` at import time (not inside functions, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body if not (isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))]
    if not top_level_only:
        nodes = list(ast.walk(tree))
    found: set[str] = set()
    for n in nodes:
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("baffle"):
            for a in n.names:
                full = f"{n.module}.{a.name}"
                found.add(full if full in MODULES else n.module)
        elif isinstance(n, ast.Import):
            found.update(a.name for a in n.names if a.name.startswith("baffle"))
    return {m for m in found if m in MODULES and m != name}


def test_no_import_cycles():
    graph = {m: _imports(m, p) for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [m, d]))
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_modules_are_small():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def _all_imports(prefix: str) -> dict[str, set[str]]:
    return {m: _imports(m, p, top_level_only=False) for m, p in MODULES.items() if m == prefix or m.startswith(prefix + ".")}


def test_layers_import_downward_only():
    forbidden = {
        "baffle.protocol": ("baffle.",),  # torch-free and self-contained: nothing of baffle outside protocol
        "baffle.config": ("baffle.sim", "baffle.server", "baffle.flower", "baffle.engine", "baffle.data", "baffle.methods",
                          "baffle.records", "baffle.privacy", "baffle.models"),
        "baffle.server": ("baffle.sim", "baffle.flower", "baffle.methods", "baffle.records", "baffle.client"),
        "baffle.engine": ("baffle.sim", "baffle.server", "baffle.flower", "baffle.methods"),
        "baffle.sim": ("baffle.flower",),
        "baffle.methods": ("baffle.flower",),
        "baffle.records": ("baffle.sim", "baffle.server", "baffle.flower", "baffle.methods"),
    }
    bad = []
    for layer, prefixes in forbidden.items():
        for mod, deps in _all_imports(layer).items():
            for d in deps:
                if layer == "baffle.protocol" and (d.startswith("baffle.protocol") or d == "baffle.config.choices"):
                    continue  # config.choices is a leaf of constants (one list of valid values per key)
                if layer == "baffle.config" and d.startswith("baffle.config"):
                    continue
                if any(d == p.rstrip(".") or d.startswith(p if p.endswith(".") else p + ".") or d == p for p in prefixes):
                    bad.append(f"{mod} imports {d}")
    assert not bad, "\n".join(sorted(bad))


def test_the_round_ingest_exists_once():
    """Only baffle.server.ingest turns validated uploads into a model step (validate -> quorum -> aggregate ->
    step); the simulator, the Flower app and the benchmarks all call it."""
    aggregating = {m for m, p in MODULES.items() if "aggregate_diffs(" in p.read_text()}
    stepping = {m for m, p in MODULES.items() if "apply_loss_diffs(" in p.read_text()}
    assert aggregating <= {"baffle.server.ingest", "baffle.server.strategy"}, sorted(aggregating)
    # a Flower node's replica re-applies the server's already-validated aggregate (the replay transport)
    assert stepping <= {"baffle.server.ingest", "baffle.server.strategy", "baffle.flower.node"}, sorted(stepping)
    for folder in ("benchmarks", "experiments", "scripts"):
        for p in (SRC.parent / folder).glob("*.py"):
            assert "aggregate_diffs(" not in p.read_text(), f"{p} keeps its own copy of the round"


def test_every_run_method_is_one_method_object():
    from baffle.config.choices import METHODS as CHOICES
    from baffle.methods import METHODS

    assert tuple(METHODS) == CHOICES
    for name, m in METHODS.items():
        assert m.name == name and callable(m.run_round) and callable(m.per_round_costs)
