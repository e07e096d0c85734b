"""Staging: an output is built under a hidden ``.NAME.graft-partial-PID`` sibling whose writer holds an ``flock`` on a
file inside it; staging left by a process that died (SIGKILL, power loss) is removed, or a previous output it had
moved aside restored, by the next writer to the same folder, even when the dead writer's PID has been reused."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
from pathlib import Path

from graft.io.renames import remove_path, rename_noreplace

log = logging.getLogger(__name__)

OWNER = ".graft-owner"  # inside a staging folder while its writer lives (flock held)
STAGING_RE = re.compile(r"^\.(?P<name>.+)\.graft-(?P<what>partial|replaced)-(?P<pid>\d+)(?:-\d+)?$")
_staged = [0]


def staging_name(destination: Path) -> Path:
    """Hidden, beside the destination, unique per writer in this process (the PID tells others whose it is)."""
    _staged[0] += 1
    return destination.with_name(f".{destination.name}.graft-partial-{os.getpid()}-{_staged[0]}")


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


def owner_record() -> dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}


def is_stale(entry: Path, pid: int) -> bool:
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
        if not is_stale(entry, int(match["pid"])):
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
        remove_path(entry)
        done.append(entry)
    return done


__all__ = ["OWNER", "STAGING_RE", "clean_stale", "is_stale", "owner_record", "staging_name"]
