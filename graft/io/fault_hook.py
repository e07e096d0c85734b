"""A test-only fault hook: the test suite kills graft mid-write to prove that no partial output survives.

It signals this process (SIGKILL unless GRAFT_TEST_KILL_SIGNAL names another) once GRAFT_TEST_KILL_AFTER units were
written (bytes; each commit step counts one). Unset, it does nothing: every writer calls `count_written`.
"""

from __future__ import annotations

import os
import signal


def _hook_setting(name: str) -> int:
    """The test hook's byte count; unset or anything but an integer leaves the hook off (never a crash at import)."""
    try:
        return int(os.environ.get(name, "-1"))
    except ValueError:
        return -1


_KILL_AFTER = _hook_setting("GRAFT_TEST_KILL_AFTER")
_KILL_SIGNAL = getattr(signal, "SIG" + os.environ.get("GRAFT_TEST_KILL_SIGNAL", "KILL"), signal.SIGKILL)
_written = [0]


def count_written(nbytes: int) -> None:
    """Called by every writer; does nothing unless the test suite set GRAFT_TEST_KILL_AFTER."""
    if _KILL_AFTER >= 0:
        _written[0] += nbytes
        if _written[0] >= _KILL_AFTER:
            os.kill(os.getpid(), _KILL_SIGNAL)
            _written[0] = -(2**62)  # once


__all__ = ["count_written"]
