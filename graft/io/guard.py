"""Decide whether graft may write a path, and write it atomically: nothing a user owns is ever lost.

Every file and folder graft writes goes through here. The rules:

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
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from graft.errors import OutputError

log = logging.getLogger(__name__)

MARKER = ".graft-output"  # in every output folder graft makes: what --force may replace, and a record of its contents
HASHED_UP_TO = 64 * 2**20  # files up to this size are also recorded by sha256 (instant); bigger ones by stat alone
HASH_BUDGET = 2**30  # ... until this many bytes of a folder were hashed (a model cut into many small shards)
OWNER = ".graft-owner"  # inside a staging folder while its writer lives (flock held)
FILE_RECORD = ".{name}.graft"  # beside a single output file: its sha256, so --force knows it is graft's
STAGING_RE = re.compile(r"^\.(?P<name>.+)\.graft-(?P<what>partial|replaced)-(?P<pid>\d+)(?:-\d+)?$")

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


# -- a tiny, test-only fault hook: signal this process (SIGKILL unless GRAFT_TEST_KILL_SIGNAL names another) once
# GRAFT_TEST_KILL_AFTER units were written (bytes; each commit step counts one) -------------------------------------
def _hook_setting(name: str) -> int:
    """The test hook's byte count; unset or anything but an integer leaves the hook off (never a crash at import)."""
    try:
        return int(os.environ.get(name, "-1"))
    except ValueError:
        return -1


_KILL_AFTER = _hook_setting("GRAFT_TEST_KILL_AFTER")
_KILL_SIGNAL = getattr(signal, "SIG" + os.environ.get("GRAFT_TEST_KILL_SIGNAL", "KILL"), signal.SIGKILL)
_written = [0]
_staged = [0]


def count_written(nbytes: int) -> None:
    """Called by every writer; does nothing unless the test suite set GRAFT_TEST_KILL_AFTER."""
    if _KILL_AFTER >= 0:
        _written[0] += nbytes
        if _written[0] >= _KILL_AFTER:
            os.kill(os.getpid(), _KILL_SIGNAL)
            _written[0] = -(2**62)  # once


# -- what this command has finished: outputs committed whole (a file renamed into place, a folder swapped in, a
# folder filled file by file), so that an interrupted command can say truthfully what it leaves -------------------
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


# -- identity of paths ------------------------------------------------------------------------------------------------
def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _self_and_ancestors(path: Path) -> list[Path]:
    path = Path(os.path.abspath(path))
    chain = [path, *path.parents]
    resolved = path.resolve()
    return chain + [p for p in (resolved, *resolved.parents) if p not in chain]


def overlapping_input(destination: Path, inputs: Iterable[str | Path]) -> Path | None:
    """The input that `destination` is, lies inside, or contains (by inode and by resolved path), if any."""
    dest_chain = _self_and_ancestors(destination)
    dest_ids = {i for i in map(_identity, dest_chain) if i is not None}
    dest_id = _identity(destination)
    dest_resolved = destination.resolve()
    for src in inputs:
        src = Path(src).expanduser()
        if not os.path.lexists(src):
            continue
        src_id = _identity(src)
        src_resolved = src.resolve()
        if src_id is not None and src_id in dest_ids:  # destination is the input or inside it
            return src
        if dest_resolved == src_resolved or src_resolved in dest_resolved.parents:
            return src
        if dest_id is not None and dest_id in {_identity(p) for p in _self_and_ancestors(src)}:
            return src  # destination holds the input
        if dest_resolved in src_resolved.parents:
            return src
    return None


# -- what graft owns ------------------------------------------------------------------------------------------------
def is_graft_folder(path: Path) -> bool:
    marker = path / MARKER
    return path.is_dir() and not path.is_symlink() and marker.is_file() and not marker.is_symlink()


def folder_kind(path: Path) -> str | None:
    """What made a graft output folder (merge, vector, inspect, search, demo), from its marker."""
    try:
        return json.loads((path / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _record_path(path: Path) -> Path:
    return path.with_name(FILE_RECORD.format(name=path.name))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_graft_file(path: Path) -> bool:
    """A regular file graft wrote and nobody changed since: recorded by the finished graft output folder holding it,
    or by its own `.NAME.graft` (any file counts in a folder graft is still filling, which keeps no record)."""
    if path.is_symlink() or not path.is_file():
        return False
    if is_graft_folder(path.parent):
        contents = _read_marker(path.parent).get("contents")
        if not isinstance(contents, dict):
            return True  # a folder graft fills file by file and never replaces whole (a search's): graft's files
        entry = contents.get(path.name)
        if isinstance(entry, dict) and _same_file(path, os.lstat(path), entry):
            return True  # recorded when graft finished the folder; else written into it since, with its own record
    record = _record_path(path)
    try:
        return not record.is_symlink() and json.loads(record.read_text()).get("sha256") == sha256_of(path)
    except (OSError, ValueError, AttributeError):
        return False


# -- what a finished graft folder holds (its record), and whether it still holds only that ----------------------------
def _entries(folder: Path, rel: str = ""):
    """(relative posix path, path, lstat) of everything below `folder`, sorted, not following symlinks; a caller's
    `send(False)` skips a folder's contents."""
    try:
        names = sorted(os.listdir(folder / rel if rel else folder))
    except OSError:
        return
    for name in names:
        sub = f"{rel}/{name}" if rel else name
        path = folder / sub
        try:
            st = os.lstat(path)
        except OSError:
            continue
        descend = yield sub, path, st
        if descend is not False and stat.S_ISDIR(st.st_mode):
            yield from _entries(folder, sub)


def _file_identity(st: os.stat_result) -> dict[str, int]:
    # ctime cannot be set back by a user (touch -d, cp -p, rsync -t all set mtime only), so an unchanged identity
    # means unchanged bytes; a changed one (a copy, a chmod, an edit) falls back to the sha256 where one is recorded
    return {"size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def record_contents(folder: Path) -> dict[str, dict[str, object]]:
    """What `folder` holds now, as the marker records it (the marker itself and graft's own staging left out)."""
    contents: dict[str, dict[str, object]] = {}
    budget = HASH_BUDGET
    for rel, path, st in _entries(folder):
        if rel == MARKER or (STAGING_RE.match(path.name) and "/" not in rel and path.name.startswith(f".{MARKER}.")):
            continue
        if stat.S_ISDIR(st.st_mode):
            contents[rel] = {"type": "dir"}
        elif stat.S_ISLNK(st.st_mode):
            contents[rel] = {"type": "link", "target": os.readlink(path)}
        elif stat.S_ISREG(st.st_mode):
            entry: dict[str, object] = {"type": "file", **_file_identity(st)}
            if st.st_size <= min(HASHED_UP_TO, budget):
                entry["sha256"] = sha256_of(path)
                budget -= st.st_size
            contents[rel] = entry
    return contents


def _read_marker(folder: Path) -> dict[str, object]:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def seal_folder(folder: Path) -> None:
    """Record in `folder`'s marker everything it holds now: graft calls this when it has finished filling one, so that
    a later --force can tell graft's files from what a user added or edited. Without a record, --force refuses."""
    data = _read_marker(folder) or {"format": "graft-output", "kind": "output"}
    data["contents"] = record_contents(folder)
    temp = _staging_name(folder / MARKER)
    try:
        temp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        os.replace(temp, folder / MARKER)
    except OSError as exc:
        _remove(temp)
        raise OutputError(f"{folder / MARKER}: cannot record what graft wrote ({exc.strerror})") from exc


def _recorded_sibling(path: Path) -> Path | None:
    """The file that `path` is graft's `.NAME.graft` record of, if `path` is one and that file is there."""
    name = path.name
    if name.startswith(".") and name.endswith(".graft") and len(name) > len(".graft") + 1:
        sibling = path.with_name(name[1:-len(".graft")])
        if os.path.lexists(sibling):
            return sibling
    return None


def _same_file(path: Path, st: os.stat_result, entry: dict[str, object]) -> bool:
    if entry.get("type") != "file" or not stat.S_ISREG(st.st_mode) or entry.get("size") != st.st_size:
        return False
    if all(entry.get(k) == v for k, v in _file_identity(st).items()):
        return True
    try:
        return "sha256" in entry and sha256_of(path) == entry["sha256"]
    except OSError:
        return False


def foreign_content(folder: Path) -> str | None:
    """Why --force may not remove graft output `folder`: the first path in it graft did not write or that changed
    since graft recorded it, as a one-line message (None: everything in it is graft's, unchanged)."""
    contents = _read_marker(folder).get("contents")
    if not isinstance(contents, dict):
        return (f"{folder}: a graft output made by an older graft or left unfinished, so graft cannot tell whether "
                "anything in it is yours; --force never deletes that: move out what you want to keep and delete the "
                "folder yourself, or choose another output")
    walk = _entries(folder)
    item = next(walk, None)
    while item is not None:
        rel, path, st = item
        entry = contents.get(rel)
        if entry is not None and not isinstance(entry, dict):
            entry = {}  # a damaged record: whatever is there counts as changed
        match = STAGING_RE.match(path.name)
        skip = False
        if rel == MARKER:
            ok = True
        elif entry is None and match and _is_stale(path, int(match["pid"])):
            ok, skip = True, True  # a killed graft's half-written staging: graft's, removed with the folder
        elif entry is None and _recorded_sibling(path) is not None:
            ok = True  # the record graft keeps beside a file it wrote: the file itself is judged (and named)
        elif entry is None:
            what = "folder" if stat.S_ISDIR(st.st_mode) else "file"
            return (f"{path}: a {what} added to the graft output {folder} after graft wrote it; --force never deletes "
                    "what was added: move it out, or delete the folder yourself")
        elif stat.S_ISDIR(st.st_mode):
            ok = entry.get("type") == "dir"
        elif stat.S_ISLNK(st.st_mode):
            ok = entry.get("type") == "link" and os.readlink(path) == entry.get("target")
        else:
            ok = _same_file(path, st, entry)
        if not ok:
            return (f"{path}: changed since graft wrote it, in the graft output {folder}; --force never deletes your "
                    "edits: move it out, or delete the folder yourself")
        try:
            item = walk.send(False) if skip else next(walk)
        except StopIteration:
            item = None
    return None


def _replaceable(path: Path, folder: bool) -> str | None:
    """Why `path` may not be replaced under --force, as a one-line message (None: it may)."""
    if folder:
        if path.is_symlink() or not path.is_dir():
            return f"{path}: exists and is not a folder; remove it or choose another --out"
        if not any(path.iterdir()):
            return None
        if is_graft_folder(path):
            return foreign_content(path)
        return (f"{path}: exists and is not a graft output (no {MARKER} file in it); --force replaces only graft's "
                "own outputs: remove it yourself or choose another --out")
    if path.is_dir():
        return f"{path}: exists and is a folder; choose a file name"
    if is_graft_file(path):
        return None
    return (f"{path}: exists and was not written by graft (or was changed since); --force replaces only graft's own "
            "outputs: remove it yourself or choose another path")


def check_destination(path: str | Path, inputs: Iterable[str | Path] = (), *, force: bool = False,
                      folder: bool = True, flag: str = "--out") -> Path:
    """The absolute destination graft may write, or an OutputError saying why not.

    A symlink at the destination stands for the place it points to (which is replaced, the link kept); a dangling
    one is refused, since where it would lead is not what the user named.
    """
    if not folder and is_stream(path):
        return Path(path)  # written as it is (see `write_file`)
    destination = Path(os.path.abspath(Path(path).expanduser()))
    if destination.is_symlink():
        if not destination.exists():
            raise OutputError(f"{destination}: a dangling symlink; remove it or choose another {flag}")
        destination = destination.resolve()
    inputs = list(inputs)
    overlap = overlapping_input(destination, inputs)
    if overlap is not None:
        raise OutputError(f"{destination}: overlaps input {overlap}; choose an {flag} outside every input")
    if os.path.lexists(destination):
        if not force:
            raise OutputError(f"{destination}: already exists; pass --force to replace a previous graft output, "
                              f"or choose another {flag}")
        why = _replaceable(destination, folder)
        if why:
            raise OutputError(why)
    return destination


def check_writable(destination: Path, staging: Path, flag: str = "--out") -> None:
    """Say so up front when the output cannot be created at all: a name too long for the file system (the hidden
    staging sibling's, which is longer) or a parent folder graft may not write into."""
    parent = destination.parent
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.fsencode(staging.name)) > name_max:
        room = name_max - (len(os.fsencode(staging.name)) - len(os.fsencode(destination.name)))
        raise OutputError(f"{destination}: the output name is too long for this file system "
                          f"({len(os.fsencode(destination.name))} bytes; at most {room}); choose a shorter {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: cannot write into this folder (permission denied); choose another {flag}")


# -- atomic renames -------------------------------------------------------------------------------------------------
def _renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags); False where the kernel, libc or file system lacks it (the caller falls back)."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Move src to dst only if nothing is at dst: FileExistsError otherwise, never a replacement."""
    if _rename2(src, dst, _RENAME_NOREPLACE):
        return
    if src.is_dir() and not src.is_symlink():
        if os.path.lexists(dst):  # the narrowest check we can make; rename itself refuses a non-empty folder
            raise FileExistsError(errno.EEXIST, "exists", str(dst))
        os.rename(src, dst)
    else:
        os.link(src, dst)  # fails with EEXIST atomically
        os.unlink(src)


def _swap(staging: Path, destination: Path, expected: tuple[int, int] | None) -> Path | None:
    """Put `staging` at `destination`, replacing the checked output `expected`; returns where the old one now is
    (to be removed), or None. Refuses if what is at `destination` is no longer what was checked."""
    if expected is None or not os.path.lexists(destination):
        rename_noreplace(staging, destination)
        return None
    if _identity(destination) != expected:
        raise FileExistsError(errno.EEXIST, "changed while graft was writing", str(destination))
    if _rename2(staging, destination, _RENAME_EXCHANGE):
        if _identity(staging) != expected:  # someone swapped it in the instant between check and exchange
            _rename2(staging, destination, _RENAME_EXCHANGE)
            raise FileExistsError(errno.EEXIST, "changed while graft was writing", str(destination))
        return staging
    old = destination.with_name(f".{destination.name}.graft-replaced-{os.getpid()}")  # pid alone: restorable
    os.rename(destination, old)
    count_written(1)
    if _identity(old) != expected:
        os.rename(old, destination)
        raise FileExistsError(errno.EEXIST, "changed while graft was writing", str(destination))
    rename_noreplace(staging, destination)
    return old


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _staging_name(destination: Path) -> Path:
    """Hidden, beside the destination, unique per writer in this process (the PID tells others whose it is)."""
    _staged[0] += 1
    return destination.with_name(f".{destination.name}.graft-partial-{os.getpid()}-{_staged[0]}")


# -- staging owners, and what dead ones left ------------------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat(5): start time in clock ticks since boot
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_record() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}


def _is_stale(entry: Path, pid: int) -> bool:
    owner = entry / OWNER
    if entry.is_dir() and not entry.is_symlink() and owner.is_file():
        try:
            record = json.loads(owner.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("host") not in (None, socket.gethostname()):
            return False  # another machine's writer on a shared file system: not ours to judge
        try:
            fd = os.open(owner, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True  # nobody holds the lock: the owner is gone (locks die with their process)
        except OSError:
            return False
        finally:
            os.close(fd)
    return not _alive(pid)


def clean_stale(parent: Path, name: str | None = None) -> list[Path]:
    """Remove staging left in `parent` by writers that died (for `name` only when given); restore a previous output
    a dead writer had moved aside and not yet replaced. Returns what was removed or restored."""
    done: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return done
    for entry in entries:
        match = STAGING_RE.match(entry.name)
        if not match or (name is not None and match["name"] != name):
            continue
        if not _is_stale(entry, int(match["pid"])):
            continue
        home = parent / match["name"]
        if match["what"] == "replaced" and not os.path.lexists(home):
            try:
                rename_noreplace(entry, home)
                log.warning("%s: restored the previous output a killed graft had moved aside", home)
                done.append(entry)
                continue
            except OSError:
                pass
        _remove(entry)
        done.append(entry)
    return done


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
        self._replacing = _identity(self.destination) if os.path.lexists(self.destination) else None
        parent = self.destination.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{parent}: cannot create the output's parent folder ({exc.strerror})") from exc
        clean_stale(parent, self.destination.name)
        self.staging = _staging_name(self.destination)
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
                _remove(self.staging)
            self.staging.mkdir()
            owner = self.staging / OWNER
            self._lock = os.open(owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
            os.write(self._lock, json.dumps(_owner_record()).encode())
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
        _remove(self.staging)

    def _commit(self) -> None:
        count_written(1)
        if self._replacing is not None and os.path.lexists(self.destination):
            why = _replaceable(self.destination, folder=True)
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
            _remove(old)
        count_written(1)


def is_stream(path: str | Path) -> bool:
    """`path` names a stream rather than a stored file: `-`, or an existing FIFO, character device or socket (the
    pipe behind /dev/stdout, a terminal, /dev/null, a shell's `>(...)`). Written as it is, in place: a stream holds
    nothing a user could lose, and has no previous version to keep."""
    if str(path) == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


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
            stream.write(raw)
            stream.flush()
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
    expected = _identity(destination) if os.path.lexists(destination) else None
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create the folder ({exc.strerror})") from exc
    clean_stale(parent, destination.name)
    staging = _staging_name(destination)
    check_writable(destination, staging, flag)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        if os.path.lexists(staging):
            _remove(staging)
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
                _remove(old)
        note_finished(destination)
    except BaseException as exc:
        _remove(staging)  # an interrupt (SIGTERM, Ctrl-C) between the write and the rename leaves nothing either
        if not isinstance(exc, OSError):
            raise
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
            raise OutputError(f"{destination}: appeared or changed while graft was writing; it was left untouched; "
                              f"rerun with another {flag}") from exc
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{destination}: disk full while writing; free space or choose another {flag}") from exc
        raise OutputError(f"{destination}: cannot write ({exc.strerror})") from exc
    if not is_graft_folder(parent) or isinstance(_read_marker(parent).get("contents"), dict):
        # beside it, unless the folder is one graft is still filling (it records the file when it is finished)
        record = _record_path(destination)
        with contextlib.suppress(OSError):  # without the record a later --force refuses to replace it: safe
            record.write_text(json.dumps({"sha256": hashlib.sha256(raw).hexdigest()}) + "\n")
    return destination


def adopt_legacy_folder(path: Path, legacy_marker: str, *, kind: str) -> None:
    """A folder made by a graft older than the shared marker (it holds `legacy_marker`, as a demo or search folder
    did) counts as that kind of graft output."""
    legacy = path / legacy_marker
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if (path.is_dir() and not path.is_symlink() and legacy.is_file() and not legacy.is_symlink()
                and "graft" in legacy.read_text()[:4096] and not (path / MARKER).exists()):
            (path / MARKER).write_text(json.dumps({"format": "graft-output", "kind": kind}) + "\n")


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


__all__ = ["MARKER", "OutputFolder", "check_destination", "clean_stale", "count_written", "finished_outputs",
           "foreign_content", "forget_finished", "is_graft_file", "is_graft_folder", "is_stdout", "is_stream",
           "make_output_folder",
           "note_finished", "overlapping_input", "record_contents", "rename_noreplace", "seal_folder", "write_file"]
