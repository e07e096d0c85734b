"""graft in a pipe or a CI log: tables keep full names off a terminal (`graft plan --list | grep q_proj`), and a
reader that stops early (`| head`) is not an error."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

from rich.table import Table

from graft.display import PIPED_WIDTH, RULE_WIDTH, GraftConsole

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _graft(*args: str) -> list[str]:
    return [sys.executable, "-m", "graft.cli", *map(str, args)]


def test_plan_list_piped_keeps_every_name_whole(make_world, tmp_path):
    world = make_world("qwen2_vl")
    plan_json = tmp_path / "plan.json"
    proc = subprocess.run(_graft("plan", "-t", world.target, "--vector", world.vector, "--list", "--json", plan_json),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = [t["target"] for t in json.loads(plan_json.read_text())["tensors"]]
    assert max(map(len, names)) > 40  # long enough that an 80-column table would cut them
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    for name in names:
        assert any(name in line for line in lines), name
    assert "…" not in proc.stdout + proc.stderr


def test_a_reader_that_leaves_early_is_not_an_error(make_world):
    """`graft plan --list | head`, `graft plan --json - | head`: the pipe is closed before graft writes; graft
    finishes and exits 0, silently."""
    world = make_world("qwen2_vl")
    for args in (("plan", "-t", world.target, "--vector", world.vector, "--list"), ("plan", "--help"),
                 ("plan", "-t", world.target, "--vector", world.vector, "--json", "-"),
                 ("inspect", "--vector", world.vector, "--json", "-")):
        proc = subprocess.Popen(_graft(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)
        proc.stdout.close()  # the reader is gone before graft has written a line
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err and b"BrokenPipe" not in err and b"internal error" not in err


def _render(console_kwargs: dict, env: dict[str, str] | None = None) -> tuple[str, int]:
    buf = io.StringIO()
    console = GraftConsole(file=buf, _environ=env or {}, **console_kwargs)
    table = Table("tensor", "λ")
    table.add_row("model.language_model.layers.27.self_attn.q_proj.weight" * 3, "0.5")
    console.print(table)
    console.rule("section")
    return buf.getvalue(), console.width


def test_console_width_off_a_terminal():
    out, width = _render({})
    assert width == PIPED_WIDTH and "model.language_model.layers.27.self_attn.q_proj.weight" * 3 in out
    assert max(len(line) for line in out.splitlines() if "section" in line) == RULE_WIDTH
    out, width = _render({}, {"COLUMNS": "60"})  # what the user asked for wins
    assert width == 60 and "…" in out
    out, width = _render({"width": 70})
    assert width == 70 and max(map(len, out.splitlines())) <= 70
