"""Read only regular files, and only inside the folder they belong to.

A FIFO named like a weight file would block a reader forever, and a symlink in a model folder could hand graft a
file from anywhere; every input file graft reads is opened through here so neither can happen.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from graft.errors import InputError


def containment_root(root: Path) -> Path:
    """The folder a model folder's symlinks may point into: the folder itself, or for a Hugging Face cache
    snapshot (models--org--name/snapshots/REV, whose files link to ../../blobs) the repository's cache folder."""
    root = root.resolve()
    return root.parent.parent if root.parent.name == "snapshots" else root


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: Path, within: Path | None = None) -> os.stat_result:
    """Refuse, without opening it, anything but a regular file (a FIFO would block forever) and a symlink that
    leads out of `within` (an input folder never hands graft a file from elsewhere)."""
    try:
        if within is not None:
            real = path.resolve()
            if real != within and within not in real.parents:
                how = f"a symlink to {real}" if path.is_symlink() else f"resolves to {real}"
                raise InputError(f"{path}: {how}, outside the model folder; graft never follows paths out of an "
                                 "input (copy the file in)")
        info = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror}); check the path and permissions") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: {_kind(info.st_mode)}, not a regular file; graft reads only regular files")
    return info


def open_regular(path: Path, within: Path | None = None) -> int:
    """A read-only descriptor on a regular file: checked before opening, opened non-blocking (a FIFO swapped in
    between cannot hang us) and checked again on the descriptor."""
    check_regular(path, within)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror})") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputError(f"{path}: {_kind(mode)}, not a regular file; graft reads only regular files")
    os.set_blocking(fd, True)
    return fd


def read_regular_bytes(path: Path, within: Path | None = None) -> bytes:
    with os.fdopen(open_regular(path, within), "rb") as handle:
        return handle.read()


def _identity(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class InputsAsRead:
    """The files graft read, as they were when it read them (device, inode, size, mtime, ctime): `check()` before
    an output is committed refuses one rewritten, replaced or removed meanwhile (a shard re-downloaded while a
    merge read it would otherwise end up, half old and half new, in an output that exits 0). ctime moves with every
    write and cannot be set back, so a rewrite that restores the size and mtime is caught too. A few `stat`s: off
    the hot path."""

    def __init__(self, paths: Iterable[Path] = ()) -> None:
        self._seen: dict[Path, tuple[int, ...] | None] = {}
        self.add(paths)

    def add(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self._seen.setdefault(Path(path), _identity(Path(path)))

    def add_from(self, other: InputsAsRead) -> None:
        """The files `other` recorded, as it recorded them (before they were read)."""
        for path, seen in other._seen.items():
            self._seen.setdefault(path, seen)

    def check(self, role: str) -> None:
        for path, seen in self._seen.items():
            now = _identity(path)
            if now != seen:
                how = ("removed" if now is None else
                       f"its size went from {seen[2]} to {now[2]} bytes" if seen is not None and now[2] != seen[2] else
                       "rewritten or replaced")
                raise InputError(f"{path}: the {role} changed while graft was reading it ({how}); the output was "
                                 "discarded and nothing was written: rerun once nothing writes to it")
