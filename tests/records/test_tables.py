"""records.tables: the one Markdown table writer. Every committed results page is regenerated through it, so its
rendering rule is pinned here (a change would rewrite every page's whitespace)."""

import pytest

from baffle.records.tables import markdown_table, number, percent, table_lines, yes_no


def test_rendering_rule_padding_and_alignment():
    text = markdown_table(["run", "acc", "note"], [["a", percent(0.9487), ""], ["FAILED: boom"]], align=[None, "right", "c"])
    assert text.splitlines() == [
        "| run | acc | note |",
        "|---|---:|:---:|",
        "| a | 94.87 |  |",  # an empty cell is two spaces between its bars
        "| FAILED: boom |  |  |",  # a short row is padded
    ]
    assert table_lines(["x"], [[1]], align="left") == ["| x |", "|:---|", "| 1 |"]


def test_a_row_longer_than_the_header_is_an_error():
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        markdown_table(["a", "b"], [[1, 2, 3]])
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b"], [], align=["r"])


def test_number_helpers():
    assert percent(None) == "n/a" and percent(None, missing="-") == "-"
    assert percent(0.5, sign=True) == "50.00%" and percent(0.12345, digits=1) == "12.3"
    assert number(1234567, ",.0f") == "1,234,567" and number(None, ".2f", missing="") == ""
    assert yes_no(True) == "yes" and yes_no(False, "**no**") == "**no**"
