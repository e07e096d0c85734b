"""`--json PATH`: what a command prints as a table, as JSON, for scripts and CI (`-` or /dev/stdout: on standard
output, the table for the eye then going to stderr). One set of rules for every command that takes it (plan, eval,
search, inspect): the destination is checked before any work, and written like every graft output."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from graft.io.guard import check_destination, is_stdout, is_stream, write_file

T = TypeVar("T")


def check_json_destination(path: str | Path | None, inputs: Iterable[str | Path] = (), *, force: bool = False) -> None:
    """Refuse an unwritable `--json` before the work (an input, another program's file, a folder)."""
    if path is not None and not is_stream(path):
        check_destination(path, inputs, force=force, folder=False, flag="--json")


def write_json(path: str | Path, payload: Any, inputs: Iterable[str | Path] = (), *, force: bool = False) -> None:
    """`payload` as JSON at `path`; a float that is not finite (a standard error of one item) is written as null,
    since JSON has no NaN."""
    text = json.dumps(_finite(payload), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    write_file(path, text, inputs=inputs, force=force, flag="--json")


def json_on_stdout(json_out: str | Path | None) -> bool:
    """The JSON goes to standard output, alone: the table (and `-q`'s path, which the JSON holds) go elsewhere."""
    return json_out is not None and is_stdout(json_out)


def table_console(json_out: str | Path | None, stdout: T, stderr: T) -> T:
    """Where the table goes: stdout, unless the JSON does."""
    return stderr if json_on_stdout(json_out) else stdout


def frame_records(frame: Any) -> list[dict]:
    """A pandas table as a list of rows (column -> value; NaN as null), every float at full precision
    (`DataFrame.to_json` keeps 10 decimals, which erases a small ratio)."""
    return [{str(k): v.item() if hasattr(v, "item") else v for k, v in row.items()}
            for row in frame.to_dict(orient="records")]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
