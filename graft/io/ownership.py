"""What graft owns, and so may replace: the ownership policy behind every write (see graft.io.guard for the rules).

An output folder holds the marker file, which records every file and subfolder graft wrote into it; a single output
file has a hidden ``.NAME.graft`` record of its sha256 beside it. ``--force`` replaces only what such a record says
graft wrote and nobody changed since; nothing is ever written over an input, inside one, or round one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from graft.errors import OutputError
from graft.io.renames import remove_path
from graft.io.staging import STAGING_RE, is_stale, staging_name

MARKER = ".graft-output"  # in every output folder graft makes: what --force may replace, and a record of its contents
HASHED_UP_TO = 64 * 2**20  # files up to this size are also recorded by sha256 (instant); bigger ones by stat alone
HASH_BUDGET = 2**30  # ... until this many bytes of a folder were hashed (a model cut into many small shards)
FILE_RECORD = ".{name}.graft"  # beside a single output file: its sha256, so --force knows it is graft's


# -- identity of paths ------------------------------------------------------------------------------------------------
def path_identity(path: Path) -> tuple[int, int] | None:
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
    dest_ids = {i for i in map(path_identity, dest_chain) if i is not None}
    dest_id = path_identity(destination)
    dest_resolved = destination.resolve()
    for src in inputs:
        src = Path(src).expanduser()
        if not os.path.lexists(src):
            continue
        src_id = path_identity(src)
        src_resolved = src.resolve()
        if src_id is not None and src_id in dest_ids:  # destination is the input or inside it
            return src
        if dest_resolved == src_resolved or src_resolved in dest_resolved.parents:
            return src
        if dest_id is not None and dest_id in {path_identity(p) for p in _self_and_ancestors(src)}:
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


def record_path(path: Path) -> Path:
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
        contents = read_marker(path.parent).get("contents")
        if not isinstance(contents, dict):
            return True  # a folder graft fills file by file and never replaces whole (a search's): graft's files
        entry = contents.get(path.name)
        if isinstance(entry, dict) and _same_file(path, os.lstat(path), entry):
            return True  # recorded when graft finished the folder; else written into it since, with its own record
    record = record_path(path)
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


def read_marker(folder: Path) -> dict[str, object]:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def seal_folder(folder: Path) -> None:
    """Record in `folder`'s marker everything it holds now: graft calls this when it has finished filling one, so that
    a later --force can tell graft's files from what a user added or edited. Without a record, --force refuses."""
    data = read_marker(folder) or {"format": "graft-output", "kind": "output"}
    data["contents"] = record_contents(folder)
    _write_marker(folder, data)


def _write_marker(folder: Path, data: dict[str, object]) -> None:
    temp = staging_name(folder / MARKER)
    try:
        temp.write_text(json.dumps(data, separators=(",", ":")) + "\n")
        os.replace(temp, folder / MARKER)
    except OSError as exc:
        remove_path(temp)
        raise OutputError(f"{folder / MARKER}: cannot record what graft wrote ({exc.strerror})") from exc


def rewrite_in_output(folder: Path, name: str, data: bytes) -> bool:
    """Replace the file `name` of the finished graft output `folder` in place, atomically (a staging sibling renamed
    over it: the file is always the old one or the new one), keeping its permissions. The marker records the new
    content only if the old one was graft's, unchanged: a file the user had edited stays unrecorded, so a later
    --force still refuses to delete it. Returns whether it is recorded."""
    path = folder / name
    contents = read_marker(folder).get("contents")
    entry = contents.get(name) if isinstance(contents, dict) else None
    try:
        old = os.lstat(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot read it ({exc.strerror}); nothing was changed") from exc
    was_graft = isinstance(entry, dict) and _same_file(path, old, entry)
    temp = staging_name(path)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(old.st_mode))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        remove_path(temp)
        raise OutputError(f"{path}: cannot write ({exc.strerror}); it was left as it was") from exc
    if was_graft and isinstance(contents, dict):
        contents[name] = {"type": "file", **_file_identity(os.lstat(path)), "sha256": sha256_of(path)}
        _write_marker(folder, read_marker(folder) | {"contents": contents})
    return was_graft


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
    contents = read_marker(folder).get("contents")
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
        elif entry is None and match and is_stale(path, int(match["pid"])):
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


def replace_refusal(path: Path, folder: bool) -> str | None:
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
        why = replace_refusal(destination, folder)
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


def adopt_legacy_folder(path: Path, legacy_marker: str, *, kind: str) -> None:
    """A folder made by a graft older than the shared marker (it holds `legacy_marker`, as a demo or search folder
    did) counts as that kind of graft output."""
    legacy = path / legacy_marker
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if (path.is_dir() and not path.is_symlink() and legacy.is_file() and not legacy.is_symlink()
                and "graft" in legacy.read_text()[:4096] and not (path / MARKER).exists()):
            (path / MARKER).write_text(json.dumps({"format": "graft-output", "kind": kind}) + "\n")


__all__ = ["FILE_RECORD", "HASHED_UP_TO", "HASH_BUDGET", "MARKER", "adopt_legacy_folder", "check_destination",
           "check_writable", "folder_kind", "foreign_content", "is_graft_file", "is_graft_folder", "is_stream",
           "overlapping_input", "path_identity", "read_marker", "record_contents", "record_path", "replace_refusal",
           "rewrite_in_output", "seal_folder", "sha256_of"]
