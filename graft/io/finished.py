"""What this command has finished: outputs committed whole (a file renamed into place, a folder swapped in, a folder
filled file by file), so that an interrupted command can say truthfully what it leaves. One list per process."""

from __future__ import annotations

import os
from pathlib import Path

_finished: dict[Path, str] = {}


def note_finished(path: Path, note: str = "") -> None:
    """`path` is whole from now on; `note` says what it holds when that is not obvious (a resume cache)."""
    _finished[Path(path)] = note or _finished.get(Path(path), "")


def finished_outputs() -> list[tuple[Path, str]]:
    """The outputs finished since `forget_finished` and still there, in order, each with its note; a path inside
    a listed folder is left out (the folder names it)."""
    there = [p for p in _finished if os.path.lexists(p)]
    return [(p, _finished[p]) for p in there if not any(q in p.parents for q in there)]


def forget_finished() -> None:
    """A command starts: nothing finished yet (the CLI's commands share one process in tests and the API)."""
    _finished.clear()


__all__ = ["finished_outputs", "forget_finished", "note_finished"]
