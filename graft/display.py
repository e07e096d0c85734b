"""Paths as the commands print them: without `..` detours (`recipes/../merged` is shown as `merged`)."""

from __future__ import annotations

import os
from pathlib import Path


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
