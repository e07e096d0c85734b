"""How the commands print: one line per message on stderr, the written path alone on stdout under `-q`, summary
tables, a byte progress bar. Names and values read from files (tensor names, config values, paths) are made
printable (graft.display) and never read as rich markup."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from graft.display import PLAIN_EVERY, GraftConsole, StepProgress, console_text, shown

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


def byte_progress(quiet: bool, console: GraftConsole | None = None) -> Progress | LoggedBytes:
    """Bytes processed, with total, rate and ETA: a bar on a terminal's stderr; in a log (CI) a plain line at most
    every PLAIN_EVERY seconds and one at the end; nothing under -q."""
    console = console or stderr
    if not quiet and not console.is_terminal:
        return LoggedBytes(console)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), console=console, disable=quiet, transient=True,
    )


class LoggedBytes:
    """`byte_progress` off a terminal: the calls the commands make on rich's Progress (`add_task`, `update` with the
    total, `advance`), said as plain lines in whole MB (graft.display.StepProgress); nothing before the total is
    known, or for less than a megabyte of work."""

    def __init__(self, console: GraftConsole) -> None:
        self.console, self.done, self.total, self.title = console, 0, 0, ""
        self._steps: StepProgress | None = None

    def __enter__(self) -> LoggedBytes:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> int:
        self.title, self.total = description, int(total or 0)
        return 0

    def update(self, task: int, total: float | None = None) -> None:
        if total is not None:
            self.total = int(total)

    def advance(self, task: int, amount: float) -> None:
        self.done += int(amount)
        if self.total < MB:
            return
        total = round(self.total / MB)
        if self._steps is None:
            self._steps = StepProgress(self.console, unit="MB", title=self.title, steps="", every=PLAIN_EVERY)
            self._steps.start(total)
        # whole MB, the last one only when every byte is done (the line that says the work is finished)
        self._steps.advance(done=total if self.done >= self.total else min(self.done // MB, total - 1))


MB = 1_000_000


__all__ = ["LoggedBytes", "byte_progress", "print_path", "say", "stderr", "stdout", "summary_table", "warn"]
