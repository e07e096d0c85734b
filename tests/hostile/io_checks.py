"""Shared checks of the hostile output/input/long-job tests: the CLI helpers and model fixtures of
tests/test_bad_input.py, plus what every hostile case asserts (no leftovers, files unchanged)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.test_bad_input import (  # noqa: F401  (fixtures are found by name)
    INDEX,
    Models,
    assert_error,
    built,
    cli,
    extract_args,
    m,
    merge_args,
    outdir,
    plan_args,
    tree_hash,
)

LEFTOVER_TAGS = (".graft-partial-", ".graft-replaced-")


def leftovers(*folders: Path) -> list[str]:
    """Staging or set-aside paths anywhere under `folders`."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if any(tag in path.name for tag in LEFTOVER_TAGS):
                found.append(str(path))
    return found


def file_hashes(*folders: Path) -> dict[str, str]:
    """sha256 of every regular file (links not followed) under `folders`."""
    state = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def graft_process(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`graft ARGS` in a real process (signals, FIFOs, working directories)."""
    code = "import sys; from graft.cli import main; sys.argv[0] = 'graft'; main()"
    environ = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=environ, timeout=timeout)


def assert_one_error_line(proc: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    context = f"exit {proc.returncode}\nstdout: {proc.stdout!r}\nstderr: {proc.stderr!r}"
    assert proc.returncode == code, context
    assert "Traceback" not in proc.stderr, context
    lines = proc.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1, context
    for name in names:
        assert name in lines[0], f"{name!r} not named\n{context}"
    return lines[0]
