"""Text as the commands print it: paths without `..` detours (`recipes/../merged` is shown as `merged`), sizes in
three digits, text read from a file made safe for a terminal, and standard streams that never turn a message into a
crash."""

from __future__ import annotations

import codecs
import io
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console, ConsoleDimensions
from rich.rule import Rule

if TYPE_CHECKING:
    from rich.text import Text

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
