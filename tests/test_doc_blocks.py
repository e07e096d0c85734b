"""Every fenced block of README.md and docs/*.md still works when pasted: bash blocks parse (`bash -n`), and each
`graft ...` command in them is parsed by graft's own command line (its subcommand exists, every option is one of
that subcommand's, and no argument is left over, as a backslash-newline inside a comma list would leave one);
Python blocks compile and use no name they do not define or import (ruff's undefined-name check), so a pasted
block fails on the model or the data it needs, never on the snippet itself. Blocks that need a GPU, the hub or
real model folders are not run here; `tests/evals/test_extending_docs.py` runs docs/extending.md end to end."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from graft.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[tuple[str, str]]:
    """(page:line, text) of every block fenced as `language`."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", match.group(3)))
    return found


BASH = blocks("bash")
PYTHON = blocks("python")


@pytest.mark.parametrize(("where", "text"), BASH, ids=[w for w, _ in BASH])
def test_bash_block_parses(where: str, text: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{where}: {proc.stderr}"


def graft_commands(text: str) -> list[list[str]]:
    """Each `graft ...` invocation of a bash block as the shell would split it (continuation lines joined,
    comments dropped, pipes and `&&` ending a command); one holding a `...` placeholder or a shell expansion is
    left out (it is a sketch, not a command)."""
    joined = text.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set("|&;"):
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words.pop(0)  # VAR=value before the command
                if words[:1] == ["graft"] and not any("..." in w or "$" in w for w in words):
                    commands.append(words[1:])
                words = []
            else:
                words.append(token)
    return commands


def test_the_pasted_commands_are_found() -> None:
    """The walk above sees the commands a reader pastes (a guard against a regex that finds nothing)."""
    commands = [c for _, text in BASH for c in graft_commands(text)]
    assert len(commands) >= 10 and {c[0] for c in commands} >= {"eval", "merge", "search", "inspect"}


GRAFT = [(where, words) for where, text in BASH for words in graft_commands(text)]


@pytest.mark.parametrize(("where", "words"), GRAFT, ids=[f"{w} graft {c[0]}" for w, c in GRAFT])
def test_graft_command_in_a_bash_block_is_accepted_by_the_command_line(where: str, words: list[str]) -> None:
    group = typer.main.get_command(app)
    name, args = words[0], words[1:]
    command = group.commands.get(name)  # type: ignore[attr-defined]
    assert command is not None, f"{where}: graft has no command {name!r}"
    ctx = click.Context(command, info_name=name, resilient_parsing=True)
    parser = command.make_parser(ctx)
    try:
        _opts, extra, _order = parser.parse_args(list(args))
    except click.UsageError as exc:  # an option that does not exist, or one without its value
        pytest.fail(f"{where}: graft {' '.join(words)}: {exc.format_message()}")
    positional = [p for p in command.params if isinstance(p, click.Argument)]
    room = sum(1 if p.nargs == 1 else len(extra) for p in positional)
    assert len(extra) <= room, f"{where}: graft {' '.join(words)}: unexpected argument(s) {extra[room:]}"


def test_python_blocks_compile_and_define_what_they_use(tmp_path: Path) -> None:
    files = []
    for n, (where, text) in enumerate(PYTHON):
        compile(text, where, "exec")  # a SyntaxError names the page and line
        path = tmp_path / f"block_{n}.py"
        path.write_text(text, encoding="utf-8")
        files.append((path, where))
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "F821,E9",
                           "--output-format", "concise", *(str(p) for p, _ in files)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    named = proc.stdout
    for path, where in files:
        named = named.replace(str(path), where)
    assert proc.returncode == 0, named
