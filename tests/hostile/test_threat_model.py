"""docs/architecture.md's threat model names, in every cell, the test that checks the rule: every name it cites is a
test of this suite, so a renamed or deleted test cannot leave a promise unchecked while the table still says it is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["input", "regular file", "size bound", "schema", "encoding", "dtype policy", "finite values", "range"]


def _section() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return text.split("<!-- threat model: begin -->", 1)[1].split("<!-- threat model: end -->", 1)[0]


def _tests() -> set[str]:
    names = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def test_every_test_the_threat_model_names_exists() -> None:
    cited = set(re.findall(r"`(test_\w+)`", _section()))
    assert len(cited) > 60
    assert sorted(cited - _tests()) == []


def test_both_tables_are_there_with_every_check_as_a_column() -> None:
    section = _section()
    assert "| " + " | ".join(COLUMNS) + " |" in section
    assert "| path | rule | tests |" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| input")]
    for row in rows:  # no empty cell: a check that cannot apply says so ("—")
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        assert all(cells), row
