"""The one Markdown table writer used by the sweep, benchmarks/, experiments/ and scripts/.

Every results file baffle writes is read by people and diffed in git, so all tables come out of one
function with one rendering rule: ``| a | b |`` rows, cells joined by ``" | "`` exactly as written (an empty
cell is two spaces between its bars), a separator row of ``---`` (``---:`` right, ``:---`` left, ``:---:``
centre). Cells are not escaped: a caller whose text can hold a ``|`` replaces it itself, because what to
replace it with is the caller's choice. The number helpers below are the formats the callers share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

_RULES = {None: "---", "": "---", "right": "---:", "r": "---:", "left": ":---", "l": ":---", "center": ":---:", "c": ":---:"}


def table_lines(
    headers: Sequence[object],
    rows: Iterable[Sequence[object]],
    align: Sequence[str | None] | str | None = None,
) -> list[str]:
    """The table as lines (header, separator, one per row), for callers that assemble a document line by line.

    `align` is one value for every column or one per column: None/"" (plain ``---``), "right"/"r",
    "left"/"l", "center"/"c". A row shorter than the header is padded with empty cells (a FAILED row that
    says why in its first cells); a longer row is an error, because Markdown would silently drop its tail.
    """
    n = len(headers)
    if align is None or isinstance(align, str):
        aligns: list[str | None] = [align] * n
    else:
        aligns = list(align)
        if len(aligns) != n:
            raise ValueError(f"align has {len(aligns)} entries for {n} columns")
    lines = [_row([str(h) for h in headers]), "|" + "".join(_RULES[a] + "|" for a in aligns)]
    for row in rows:
        cells = [str(c) for c in row]
        if len(cells) > n:
            raise ValueError(f"row has {len(cells)} cells for {n} columns: {cells!r}")
        lines.append(_row(cells + [""] * (n - len(cells))))
    return lines


def markdown_table(
    headers: Sequence[object],
    rows: Iterable[Sequence[object]],
    align: Sequence[str | None] | str | None = None,
) -> str:
    """The table as one string, lines joined by newlines, no trailing newline (see `table_lines`)."""
    return "\n".join(table_lines(headers, rows, align))


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def percent(x: float | None, digits: int = 2, sign: bool = False, missing: str = "n/a") -> str:
    """A fraction in [0, 1] as a percentage: ``percent(0.9487) == "94.87"``, with ``sign=True`` "94.87%".

    `missing` stands in for None (a run that has not finished, a cell that was not run).
    """
    if x is None:
        return missing
    return f"{100 * x:.{digits}f}" + ("%" if sign else "")


def number(x: float | None, spec: str, missing: str = "n/a") -> str:
    """`x` formatted with a format spec (``number(0.1234, ".3f") == "0.123"``), `missing` for None."""
    return missing if x is None else format(x, spec)


def yes_no(ok: bool, no: str = "no") -> str:
    """A met/not-met cell; benchmarks pass ``no="**no**"`` or ``"NO"`` so a miss stands out."""
    return "yes" if ok else no
