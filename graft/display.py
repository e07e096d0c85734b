"""Text as the commands print it: paths without `..` detours (`recipes/../merged` is shown as `merged`), sizes in
three digits, text read from a file made safe for a terminal, standard streams that never turn a message into a
crash, and the progress of long runs (a rich bar on a terminal or in Jupyter, plain lines in a log), which the
commands and the Python API share."""

from __future__ import annotations

import codecs
import functools
import io
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.rule import Rule

if TYPE_CHECKING:
    from rich.text import Text

F = TypeVar("F", bound=Callable[..., Any])

# C0 and C1 controls (ESC sequences, carriage return, newline, backspace), the bidirectional formatting characters
# (which reorder what a terminal shows) and lone surrogates (which no encoder accepts).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` read from a file (a tensor name, a prompt, a config value) as it may reach a terminal or a log: every
    control or bidirectional formatting character and every lone surrogate is written as its Python escape
    (`\\x1b`, `\\u202e`, `\\ud800`), so a name can neither rewrite the screen, reorder what is shown nor break an
    encoder, and a message stays one line. Everything else, non-ASCII letters included, is kept as it is."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def console_text(text: object, style: str = "") -> Text:
    """`text` (from a file, or holding a part read from one) as rich prints it: `printable`, and taken literally,
    never as rich markup (a tensor named `[bold]x` is printed as such). The one way a command puts such text in a
    table cell or a message."""
    from rich.text import Text

    return Text(printable(str(text)), style=style)


ESCAPE_UNENCODABLE = "graft-escape"


def _escape_unencodable(error: UnicodeError) -> tuple[str | bytes, int]:
    """Encoding error handler: a character the stream's encoding lacks is written as its Python escape (`τ` as
    `\\u03c4` on an ASCII terminal), and a byte that was not UTF-8 in a file name (held as a lone surrogate,
    `\\udcff`) as that very byte, so a printed path stays the path."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    char = error.object[error.start]
    if "\udc80" <= char <= "\udcff" and "/".encode(error.encoding, "strict") == b"/":  # an ASCII-based encoding
        return bytes([ord(char) - 0xDC00]), error.start + 1
    return char.encode("unicode_escape").decode("ascii"), error.start + 1


def use_safe_streams() -> None:
    """Make stdout and stderr write whatever a message holds, whatever their encoding (`PYTHONIOENCODING=ascii`,
    cp1252, a C locale): an unencodable character is escaped instead of raising UnicodeEncodeError after the work
    is done. The command line calls this once, before any command runs; the encoding itself is left as the user
    set it."""
    try:
        codecs.lookup_error(ESCAPE_UNENCODABLE)
    except LookupError:
        codecs.register_error(ESCAPE_UNENCODABLE, _escape_unencodable)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=ESCAPE_UNENCODABLE)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout = ReaderMayLeave(sys.stdout)  # type: ignore[assignment]


def reader_left(fileno: int) -> None:
    """The reader of the pipe at `fileno` has gone: point the descriptor at os.devnull (as Python's documentation on
    SIGPIPE recommends), so that what is still written there is dropped and no flush at exit fails."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fileno)
    finally:
        os.close(devnull)


class ReaderMayLeave:
    """Standard output whose reader may stop reading (`graft plan --list | head`): the first write to a closed pipe
    points the descriptor at os.devnull, as Python's documentation on SIGPIPE recommends, and the rest of the
    output is dropped; the command finishes its work and exits with its own code, never click's 1 ("a bug in
    graft") or a traceback at exit. Everything else is the wrapped stream's."""

    def __init__(self, stream: io.TextIOWrapper) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()

    def _reader_left(self) -> None:
        reader_left(self._stream.fileno())

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def shown(path: str | Path) -> str:
    """The shortest spelling of `path` that names the same file: `os.path.normpath` when that still reaches it
    (a `..` after a symlinked folder does not), else the resolved absolute path."""
    text = str(path)
    norm = os.path.normpath(text)
    if norm == text:
        return text
    try:
        if os.path.samefile(norm, text):
            return norm
    except OSError:  # not there (yet): only the real path is safe to print
        pass
    return str(Path(text).resolve())


def human_size(nbytes: float) -> str:
    """Bytes in powers of 1000, three significant digits (what messages and tables print)."""
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000
    return f"{nbytes:.3g} TB"

PIPED_WIDTH = 4096  # off a terminal: lines as long as their content, up to this
RULE_WIDTH = 80  # a section rule off a terminal: a rule is decoration, not content


class GraftConsole(Console):
    """Where nobody reads at a fixed width (`graft plan --list | grep q_proj`, `> log.txt`, CI), rich would wrap
    every line at 80 columns and elide table cells (`uniform_0…`); here tables and messages keep their full width
    instead. A terminal, Jupyter, `$COLUMNS` or an explicit `width=` keep rich's own choice."""

    def _piped(self) -> bool:
        return (self._width is None and not self.is_terminal and not self.is_jupyter
                and "COLUMNS" not in self._environ)

    @property
    def size(self) -> ConsoleDimensions:
        dims = Console.size.fget(self)  # type: ignore[attr-defined]
        return ConsoleDimensions(PIPED_WIDTH, dims.height) if self._piped() else dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def rule(self, title: Any = "", **kwargs: Any) -> None:
        if not self._piped():
            return super().rule(title, **kwargs)
        self.print(Rule(title, **kwargs), width=RULE_WIDTH)
        return None


PLAIN_EVERY = 10.0  # seconds between plain progress lines of a run made of many short steps (a log, not a terminal)


def _eta(done: float, total: float, seconds: float) -> str:
    if done <= 0 or seconds <= 0 or done >= total:
        return "—" if done < total else "0 s"
    left = (total - done) * seconds / done
    return f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"


class StepProgress:
    """`total` units of work (items, trials) counted as they finish. `start`, `advance` after each step, `stop`."""

    def __init__(self, console: Console, *, unit: str, title: str, steps: str = "tasks", every: float = 0.0):
        self.console, self.unit, self.title, self.step_name = console, unit, title, steps
        self.every, self._said = every, float("-inf")  # plain lines at most every `every` s (and the last one)
        self.live = (console.is_terminal or (console.is_jupyter and _widgets())) and not console.quiet
        self.total = self.done = 0
        self.steps = self.steps_total = 0
        self._bar: Progress | None = None
        self._task = None
        self._started = 0.0

    def start(self, total: int, steps_total: int = 0, done: int = 0) -> None:
        self.total, self.steps_total, self.done, self._started = total, steps_total, done, time.perf_counter()
        self._base = done  # work finished before this run (a resumed study): not counted in the rate
        if self.live:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(f"{self.unit}"), TextColumn("{task.fields[rate]}"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=self.console,
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.title, total=total, completed=done, rate="", note="")

    def advance(self, amount: int = 1, *, note: str = "", done: int | None = None, total: int | None = None) -> None:
        """`amount` more units finished (or `done` in all, e.g. a shared study's count); `note` shows beside it;
        `total` corrects the total (an estimate made exact). Off a terminal a plain line says so, at most every
        `every` seconds (many short steps would flood a CI log) and always for the last step."""
        self.done = done if done is not None else self.done + amount
        if total is not None:
            self.total = total
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, total=total)
        self.steps += 1
        seconds = time.perf_counter() - self._started
        rate = (self.done - self._base) / seconds if seconds > 0 else 0.0
        steps = f"{self.steps}/{self.steps_total} {self.step_name}, " if self.steps_total else ""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{rate:.2f} {self.unit}/s", note=note)
        elif not self.console.quiet and (seconds - self._said >= self.every or self.done >= self.total):
            self._said = seconds
            self.console.print(f"{self.title}: {steps}{self.done}/{self.total} "
                               f"{self.unit}, {rate:.2f} {self.unit}/s, ETA "
                               f"{_eta(self.done - self._base, self.total - self._base, seconds)}", soft_wrap=True,
                               highlight=False)

    def follow(self, done: int, total: int) -> None:
        """A `steps(done, total)` callback (a search's): the first call starts the count, the next ones move it and
        correct its total."""
        if self.total == 0:
            self.start(total, done=done)
        else:
            self.advance(done=done, total=total)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None




def in_notebook() -> bool:
    """Running in Jupyter (rich's own test), where a Python call's progress is shown by default."""
    return Console().is_jupyter


def _widgets() -> bool:
    """rich draws a live bar in Jupyter only through ipywidgets; without it, plain lines."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def shows_progress(unit: str, title: str, into: str) -> Callable[[F], F]:
    """For a Python API call (`graft.evaluate`, `graft.run_search`) that takes a progress argument `into` (`bar`, a
    StepProgress, or `steps`, a `(done, total)` callable) and a `show_progress` flag: when the caller gives no
    progress of its own, one is made on stderr by default only in a notebook (a script stays quiet, as a library
    should), with `show_progress=True` anywhere, never with False; it is stopped when the call ends, however."""

    def wrap(function: F) -> F:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            show = kwargs.get("show_progress")
            if kwargs.get(into) is not None or show is False or (show is None and not in_notebook()):
                return function(*args, **kwargs)
            bar = StepProgress(GraftConsole(stderr=True, highlight=False), unit=unit, title=title, every=PLAIN_EVERY)
            kwargs[into] = bar if into == "bar" else bar.follow
            try:
                return function(*args, **kwargs)
            finally:
                bar.stop()

        return call  # type: ignore[return-value]

    return wrap
