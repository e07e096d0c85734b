"""Docs stay in step with the code: every flag of every command is in docs/cli.md, and README names them."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from graft.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]  (app.registered_commands is empty)


def test_the_commands_are_found() -> None:
    assert {"extract", "plan", "merge", "eval", "search", "inspect", "recipe", "push", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_is_documented(name: str) -> None:
    command = COMMANDS[name]
    reference = (ROOT / "docs" / "cli.md").read_text()
    section = reference.split(f"## graft {name}\n", 1)[1].split("\n## graft ", 1)[0]
    for param in command.params:
        for flag in param.opts:
            if flag.startswith("--"):
                assert flag in section, f"{flag} of `graft {name}` missing from docs/cli.md: run scripts/cli-docs.sh"
    assert f"`graft {name}" in (ROOT / "README.md").read_text()
