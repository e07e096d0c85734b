"""Atomic renames: `renameat2` with RENAME_NOREPLACE (never over what appeared meanwhile) or RENAME_EXCHANGE (swap with
the very output that was checked), through libc, with the fallbacks where the kernel, libc or file system lacks it."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
from pathlib import Path

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


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


def rename2(src: Path, dst: Path, flags: int) -> bool:
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
    if rename2(src, dst, RENAME_NOREPLACE):
        return
    if src.is_dir() and not src.is_symlink():
        if os.path.lexists(dst):  # the narrowest check we can make; rename itself refuses a non-empty folder
            raise FileExistsError(errno.EEXIST, "exists", str(dst))
        os.rename(src, dst)
    else:
        os.link(src, dst)  # fails with EEXIST atomically
        os.unlink(src)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "remove_path", "rename2", "rename_noreplace"]
