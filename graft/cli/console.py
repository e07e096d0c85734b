"""How the commands print: one line per message on stderr, the written path alone on stdout under `-q`, summary
tables, a byte progress bar. Names and values read from files (tensor names, config values, paths) are made
printable (graft.display) and never read as rich markup."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from graft.display import GraftConsole, console_text, shown

stderr = GraftConsole(stderr=True, highlight=False)
stdout = GraftConsole(highlight=False)


def say(label: str, style: str, text: str) -> None:
    """One line on stderr: `label` in `style`, then `text`, which may hold names and values read from files (tensor
    names, config values, paths), made printable and never read as markup: the one way a message is printed."""
    stderr.print(Text.assemble((label, style), " ", console_text(text)), soft_wrap=True)


def warn(note: str) -> None:
    """A warning: printed whatever -q says (only --strict changes what a plan warning does)."""
    say("warning:", "bold yellow", note)


def print_path(path: Path) -> None:
    """The path a command wrote, alone on stdout (`-q`: what a script reads), taken literally."""
    stdout.print(Text(shown(path)), soft_wrap=True, highlight=False)


def summary_table(title: str, rows: list[tuple[str, object]]) -> Table:
    """A two-column summary table; every value is taken literally and made printable (it may name files and
    tensors)."""
    table = Table(title=title, show_header=False)
    for label, value in rows:
        table.add_row(label, console_text(value))
    return table


def byte_progress(quiet: bool) -> Progress:
    """A bar of bytes processed on a terminal's stderr (none under -q or in a log)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=stderr, disable=quiet or not stderr.is_terminal, transient=True,
    )


__all__ = ["byte_progress", "print_path", "say", "stderr", "stdout", "summary_table", "warn"]
