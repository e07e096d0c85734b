"""Write a file or a folder atomically, only where graft may: nothing a user owns is ever lost.

Every file and folder graft writes goes through the two writers here (`write_file`, `OutputFolder`) or
`make_output_folder`. The rules, each kept by its own module: what graft owns and may replace (graft.io.ownership),
staging and what dead writers left (graft.io.staging), the atomic renames (graft.io.renames), the list of finished
outputs an interrupted command reports (graft.io.finished) and the test-only fault hook (graft.io.fault_hook):

- never an input, nor a path inside one, nor a folder that holds one (compared by device and inode, so a symlink or a
  bind-mount alias of an input is caught, and by resolved path for what does not exist yet);
- never an existing path without ``force``, and ``force`` replaces only graft's own outputs: an empty folder, a file
  graft recorded as written and nobody changed since (a hidden ``.NAME.graft`` beside it holding its sha256), or a
  folder holding the marker file graft writes into every output folder *and nothing graft did not write*. When graft
  finishes a folder, the marker records every file and subfolder in it (each file's size, inode, mtime and ctime in
  nanoseconds, and the sha256 of files up to `HASHED_UP_TO`, `HASH_BUDGET` bytes in all). Before ``--force`` removes
  anything, the folder is compared with that record: a file or folder not in it, or a recorded file whose content
  changed, is refused by name and nothing is touched. A folder whose marker holds no record (an older graft, or a fill
  that was killed) is refused too, since graft cannot tell what in it is the user's;
- built beside the destination under a hidden ``.NAME.graft-partial-PID`` name and moved into place in one atomic
  rename that cannot replace what appeared meanwhile (``renameat2`` with RENAME_NOREPLACE), or that swaps with the
  very output that was checked (RENAME_EXCHANGE), so the destination is always absent, the previous complete output
  or the new one;
- staging left by a process that died (SIGKILL, power loss) is removed by the next writer to the same folder. The
  owner of a staging folder holds an ``flock`` on a file inside it, so a dead owner is recognised even when its PID
  has been reused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from graft.display import reader_left
from graft.errors import OutputError
from graft.io.fault_hook import count_written
from graft.io.finished import finished_outputs, forget_finished, note_finished
from graft.io.ownership import (
    MARKER,
    adopt_legacy_folder,
    check_destination,
    check_writable,
    folder_kind,
    foreign_content,
    is_graft_file,
    is_graft_folder,
    is_stream,
    overlapping_input,
    path_identity,
    read_marker,
    record_contents,
    record_path,
    replace_refusal,
    seal_folder,
)
from graft.io.renames import RENAME_EXCHANGE, remove_path, rename2, rename_noreplace
from graft.io.staging import OWNER, STAGING_RE, clean_stale, owner_record, staging_name


# -- putting a finished output in place -------------------------------------------------------------------------------
def _swap(staging: Path, destination: Path, expected: tuple[int, int] | None) -> Path | None:
    """Put `staging` at `destination`, replacing the checked output `expected`; returns where the old one now is
    (to be removed), or None. Refuses if what is at `destination` is no longer what was checked."""
    if expected is None or not os.path.lexists(destination):
        rename_noreplace(staging, destination)
        return None
    if path_identity(destination) != expected:
        raise FileExistsError(errno.EEXIST, "changed while graft was writing", str(destination))
    if rename2(staging, destination, RENAME_EXCHANGE):
        if path_identity(staging) != expected:  # someone swapped it in the instant between check and exchange
            rename2(staging, destination, RENAME_EXCHANGE)
            raise FileExistsError(errno.EEXIST, "changed while graft was writing", str(destination))
        return staging
    old = destination.with_name(f".{destination.name}.graft-replaced-{os.getpid()}")  # pid alone: restorable
    os.rename(destination, old)
    count_written(1)
    if path_identity(old) != expected:
        os.rename(old, destination)
        raise FileExistsError(errno.EEXIST, "changed while graft was writing", str(destination))
    rename_noreplace(staging, destination)
    return old


# -- the two writers ------------------------------------------------------------------------------------------------
@dataclass
class OutputFolder:
    """A folder built in a hidden sibling and moved into place at the end: all or nothing, never over what a user
    owns. `kind` is stored in the folder's marker (what made it)."""

    destination: Path
    inputs: Iterable[Path] = ()
    force: bool = False
    kind: str = "output"
    staging: Path = field(init=False)

    def __post_init__(self) -> None:
        self.inputs = list(self.inputs)
        self.destination = check_destination(self.destination, self.inputs, force=self.force, folder=True)
        self._replacing = path_identity(self.destination) if os.path.lexists(self.destination) else None
        parent = self.destination.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{parent}: cannot create the output's parent folder ({exc.strerror})") from exc
        clean_stale(parent, self.destination.name)
        self.staging = staging_name(self.destination)
        check_writable(self.destination, self.staging)
        self._lock: int | None = None

    def check_free_space(self, needed: int, headroom: int = 4 * 2**20) -> None:
        from graft.display import human_size

        needed += headroom
        free = shutil.disk_usage(self.destination.parent).free
        if free < needed:
            raise OutputError(
                f"{self.destination.parent}: {human_size(needed)} needed but only {human_size(free)} free; "
                "free space or choose another --out"
            )

    def __enter__(self) -> Path:
        try:
            if os.path.lexists(self.staging):
                remove_path(self.staging)
            self.staging.mkdir()
            owner = self.staging / OWNER
            self._lock = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            os.write(self._lock, json.dumps(owner_record()).encode())
            (self.staging / MARKER).write_text(json.dumps({"format": "graft-output", "kind": self.kind}) + "\n")
        except OSError as exc:
            self._abandon()
            self._raise(exc, committing=False)
        return self.staging

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            try:
                self._commit()
                return
            except OSError as commit_error:
                exc = commit_error
            except BaseException:
                self._abandon()
                raise
        self._abandon()
        if isinstance(exc, OSError):
            self._raise(exc, committing=exc_type is None)

    def _raise(self, exc: OSError, *, committing: bool) -> None:
        """Any write in the staging folder that hits a full disk is the user's to fix, not a bug: one line."""
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{self.destination}: disk full while writing; free space or choose another --out"
                              ) from exc
        if not committing:
            raise OutputError(f"{self.staging}: cannot write ({exc.strerror}); choose another --out") from exc
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise OutputError(
                f"{self.destination}: appeared or changed while graft was writing; it was left untouched "
                "and the new output discarded; rerun with another --out (or --force over a graft output)"
            ) from exc
        raise OutputError(f"{self.destination}: could not move the finished output into place "
                          f"({exc.strerror})") from exc

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _abandon(self) -> None:
        self._release()
        remove_path(self.staging)

    def _commit(self) -> None:
        count_written(1)
        if self._replacing is not None and os.path.lexists(self.destination):
            why = replace_refusal(self.destination, folder=True)
            if why:
                raise FileExistsError(errno.EEXIST, why, str(self.destination))
        (self.staging / OWNER).unlink()
        self._release()
        seal_folder(self.staging)  # hidden until the swap below, so the record holds only what graft wrote
        count_written(1)
        old = _swap(self.staging, self.destination, self._replacing)
        note_finished(self.destination)
        count_written(1)
        if old is not None:
            remove_path(old)
        count_written(1)


def is_stdout(path: str | Path) -> bool:
    """`path` is where this process's standard output goes (`-`, /dev/stdout, or the very pipe or file it is)."""
    if str(path) == "-":
        return True
    try:
        st, out = os.stat(path), os.fstat(1)
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino) and not stat.S_ISREG(st.st_mode)


def _write_stream(path: str | Path, raw: bytes, flag: str) -> None:
    import sys

    try:
        if is_stdout(path):
            sys.stdout.flush()
            stream = sys.stdout.buffer
            try:
                stream.write(raw)
                stream.flush()
            except BrokenPipeError:  # `graft plan --json - | head -1`: the reader stopped early, as it may
                reader_left(stream.fileno())
            return
        with open(path, "wb") as handle:
            handle.write(raw)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write to this stream ({exc.strerror or exc}); choose another {flag}"
                          ) from exc


def write_file(path: str | Path, data: str | bytes, *, inputs: Iterable[str | Path] = (), force: bool = False,
               flag: str = "--out") -> Path:
    """Write one file atomically under the rules above; returns its absolute path. A stream (`-`, a pipe, a
    terminal, /dev/null: see `is_stream`) is written as it is."""
    if is_stream(path):
        _write_stream(path, data.encode("utf-8") if isinstance(data, str) else data, flag)
        return Path(path)
    destination = check_destination(path, inputs, force=force, folder=False, flag=flag)
    expected = path_identity(destination) if os.path.lexists(destination) else None
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create the folder ({exc.strerror})") from exc
    clean_stale(parent, destination.name)
    staging = staging_name(destination)
    check_writable(destination, staging, flag)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        if os.path.lexists(staging):
            remove_path(staging)
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        count_written(len(raw))
        if force and is_graft_folder(parent):
            os.replace(staging, destination)  # graft's own folder (e.g. search workers sharing one): last one wins
        else:
            old = _swap(staging, destination, expected)
            if old is not None:
                remove_path(old)
        note_finished(destination)
    except BaseException as exc:
        remove_path(staging)  # an interrupt (SIGTERM, Ctrl-C) between the write and the rename leaves nothing either
        if not isinstance(exc, OSError):
            raise
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
            raise OutputError(f"{destination}: appeared or changed while graft was writing; it was left untouched; "
                              f"rerun with another {flag}") from exc
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{destination}: disk full while writing; free space or choose another {flag}") from exc
        raise OutputError(f"{destination}: cannot write ({exc.strerror})") from exc
    if not is_graft_folder(parent) or isinstance(read_marker(parent).get("contents"), dict):
        # beside it, unless the folder is one graft is still filling (it records the file when it is finished)
        record = record_path(destination)
        with contextlib.suppress(OSError):  # without the record a later --force refuses to replace it: safe
            record.write_text(json.dumps({"sha256": hashlib.sha256(raw).hexdigest()}) + "\n")
    return destination


def make_output_folder(path: str | Path, inputs: Iterable[str | Path] = (), *, kind: str, force: bool = False,
                       reuse: bool = False, flag: str = "--out") -> Path:
    """Create (or, with `reuse`, keep using) a folder that graft fills file by file (a search, the demo): refused if
    it is or overlaps an input, or exists without being a graft output (an empty folder is fine). With `force` a
    previous one is removed only if it holds just what its record says graft wrote; the caller seals the new one
    (`seal_folder`) when it has filled it."""
    destination = Path(os.path.abspath(Path(path).expanduser()))
    if destination.is_symlink() and destination.exists():
        destination = destination.resolve()
    overlap = overlapping_input(destination, list(inputs))
    if overlap is not None:
        raise OutputError(f"{destination}: overlaps input {overlap}; choose an {flag} outside every input")
    if os.path.lexists(destination):
        if destination.is_symlink() or not destination.is_dir():
            raise OutputError(f"{destination}: exists and is not a folder; choose another {flag}")
        if any(destination.iterdir()) and not is_graft_folder(destination):
            raise OutputError(f"{destination}: a non-empty folder that graft did not make (no {MARKER}); "
                              f"choose another {flag}")
        if is_graft_folder(destination) and folder_kind(destination) != kind:
            raise OutputError(f"{destination}: a graft {folder_kind(destination)} output, not a {kind}'s; "
                              f"choose another {flag}")
        if is_graft_folder(destination) and not reuse:
            if not force:
                raise OutputError(f"{destination}: already exists; pass --force to replace a previous graft output, "
                                  f"or choose another {flag}")
            why = foreign_content(destination)
            if why:
                raise OutputError(why)
            shutil.rmtree(destination)
    try:
        destination.mkdir(parents=True, exist_ok=True)
        marker = destination / MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"format": "graft-output", "kind": kind}) + "\n")
    except OSError as exc:
        raise OutputError(f"{destination}: cannot create it ({exc.strerror})") from exc
    note_finished(destination)  # filled file by file: every file in it is whole, so the folder is kept as it is
    return destination


# The writers, and (for the modules that write) the names of the rules they keep, from one import.
__all__ = ["MARKER", "OWNER", "STAGING_RE", "OutputFolder", "adopt_legacy_folder", "check_destination", "clean_stale",
           "count_written", "finished_outputs", "folder_kind", "foreign_content", "forget_finished", "is_graft_file",
           "is_graft_folder", "is_stdout", "is_stream", "make_output_folder", "note_finished", "overlapping_input",
           "record_contents", "rename_noreplace", "seal_folder", "write_file"]
