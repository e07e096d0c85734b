"""Every test docs/architecture.md's threat-model tables cite exists: a cell names `path.py::test_name` (under
tests/; a bare file name is found in any folder there when only one file has it), or `::test_name` for another test
of the file named before it on the same row, and a renamed or deleted test fails here instead of leaving a promise
without its check."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
