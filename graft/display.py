"""Text as the commands print it: paths without `..` detours (`recipes/../merged` is shown as `merged`), sizes in
three digits, and text read from a file made safe for a terminal."""

from __future__ import annotations

import os
import re
from pathlib import Path

# C0 and C1 controls (ESC sequences, carriage return, newline, backspace), the bidirectional formatting characters
# (which reorder what a terminal shows) and lone surrogates (which no encoder accepts).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` read from a file (a tensor name, a prompt, a config value) as it may reach a terminal or a log: every
    control or bidirectional formatting character and every lone surrogate is written as its Python escape
    (`\\x1b`, `\\u202e`, `\\ud800`), so a name can neither rewrite the screen, reorder what is shown nor break an
    encoder, and a message stays one line. Everything else, non-ASCII letters included, is kept as it is."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


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
