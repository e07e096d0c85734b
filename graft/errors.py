"""User-facing errors. Each carries the exit code the CLI returns, so scripts and CI can branch on them.

A message is one line that names the file, tensor or field at fault and says what to do about it.
"""

from __future__ import annotations


class GraftError(Exception):
    """Base class: an expected failure caused by input, not a bug in graft."""

    exit_code = 1


class UsageError(GraftError):
    """Bad flags or an invalid recipe / config file."""

    exit_code = 2


class InputError(GraftError):
    """A missing, unreadable, corrupt or unsupported input (folder, shard, header, pickle file)."""

    exit_code = 3


class IncompatibleError(GraftError):
    """Inputs are readable but do not fit together (architecture, names, shapes)."""

    exit_code = 4


class OutputError(GraftError):
    """The output cannot be written: it exists (without --force), overlaps an input, or the disk is full."""

    exit_code = 5


EXIT_CODES = {
    0: "success",
    1: "unexpected error (a bug: please report it with the traceback from -v)",
    UsageError.exit_code: "usage error: bad flag, recipe or config file",
    InputError.exit_code: "input error: missing, corrupt or unsupported file",
    IncompatibleError.exit_code: "incompatible inputs: architectures, names or shapes do not fit",
    OutputError.exit_code: "output error: output exists, overlaps an input, or the disk is full",
}


def reason(exc: BaseException, limit: int = 300) -> str:
    """A library's error inside one of graft's one-line messages: its class and the first line of its text, cut
    short (an HTTP client's or a tracker's message can run to pages)."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
