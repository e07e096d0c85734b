"""Every test docs/architecture.md's threat-model tables cite exists, so a renamed or deleted test fails here instead
of leaving a promise without its check. A cell names `path.py::test_name` (under tests/; a bare file name is found
in any folder there when only one file has it), `::test_name` for another test of the file named before it on the
same row, or a bare `test_name` of the suite."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["input", "regular file", "size bound", "schema", "encoding", "dtype policy", "finite values", "range"]
CITATION = re.compile(r"`(?:tests/)?((?:[\w-]+/)*[\w-]+\.py)?::(test_\w+)")


def threat_model_sections() -> list[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.MULTILINE)
    return [part for part in parts if part.startswith("Threat model")]


def cited_file(path: str) -> Path | None:
    direct = ROOT / "tests" / path
    if direct.is_file():
        return direct
    found = sorted((ROOT / "tests").rglob(Path(path).name)) if "/" not in path else []
    return found[0] if len(found) == 1 else None


@cache
def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def citations() -> list[tuple[str, str, str]]:
    """(file, test, row) for every test a threat-model row cites."""
    found = []
    for section in threat_model_sections():
        for row in section.splitlines():
            current = None
            for file, test in CITATION.findall(row):
                current = file or current
                assert current, f"::{test} with no file before it on its row: {row[:120]}"
                found.append((current, test, row))
    return found


def test_the_threat_model_cites_only_tests_that_exist() -> None:
    cited = citations()
    assert len(cited) > 40, "the threat-model tables are missing or cite no tests"
    missing = [f"{file}::{test}" for file, test, _ in cited
               if (path := cited_file(file)) is None or test not in defined_tests(path)]
    assert not missing, f"cited in docs/architecture.md but not found: {missing}"


def every_test_name() -> set[str]:
    return {name for path in (ROOT / "tests").rglob("test_*.py") for name in defined_tests(path)
            if name.startswith("test_")}


def checkpoint_section() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    return text.split("<!-- threat model: begin -->", 1)[1].split("<!-- threat model: end -->", 1)[0]


def test_every_bare_test_name_the_threat_model_cites_exists() -> None:
    cited = {name for section in threat_model_sections() for name in re.findall(r"`(test_\w+)`", section)}
    assert len(cited) > 60
    assert sorted(cited - every_test_name()) == []


def test_the_checkpoint_tables_have_every_check_as_a_column_and_no_empty_cell() -> None:
    section = checkpoint_section()
    assert "| " + " | ".join(COLUMNS) + " |" in section
    assert "| path | rule | tests |" in section
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| input")]
    for row in rows:  # a check that cannot apply says so ("—")
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        assert all(cells), row
