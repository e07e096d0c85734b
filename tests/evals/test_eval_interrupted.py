"""An evaluation stopped by SIGTERM says what it leaves, truthfully: the samples file it had finished and the resume
cache of scored tasks are kept and named, the results file it was writing is not left half-made."""

from __future__ import annotations

import signal
from pathlib import Path

from typer.testing import CliRunner

from graft.cli import app
from graft.evals.config import FIXTURES
from tests.hostile.io_checks import graft_process


def _args(model: Path, out: Path) -> list[str]:
    return ["eval", str(model), "--tasks", "medqa", "--data", str(FIXTURES / "data.yaml"), "--limit", "2", "--out",
            str(out), "--device", "cpu", "-q"]


def _terminated_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("terminated")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_sigterm_after_the_samples_names_them_as_kept(tiny_llama: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole" / "ev.json"
    assert CliRunner().invoke(app, _args(tiny_llama, whole)).exit_code == 0
    samples = whole.with_name("ev.samples.jsonl")
    size = samples.stat().st_size  # the same model, items and greedy decoding write the same bytes again

    out = tmp_path / "run" / "ev.json"
    # The hook signals once this many bytes are written: the samples (renamed into place), then the results' first
    # bytes, between their write and their rename.
    proc = graft_process(*_args(tiny_llama, out),
                         env={"GRAFT_TEST_KILL_AFTER": str(size + 1), "GRAFT_TEST_KILL_SIGNAL": "TERM"})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    line = _terminated_line(proc.stderr)
    kept, resume = out.with_name("ev.samples.jsonl"), out.with_name("ev.partial.sqlite")
    assert line == ("terminated (SIGTERM): nothing half-written was left behind; finished before the signal and "
                    f"kept: {resume} (the tasks scored so far, reused when the command is rerun), {kept}")
    assert kept.read_bytes() == samples.read_bytes()
    assert not out.exists()
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".graft")) == [resume.name, kept.name]
    # The samples are graft's own finished output: replaced with --force; the scored tasks come from the cache.
    rerun = CliRunner().invoke(app, [*_args(tiny_llama, out), "--force"])
    assert rerun.exit_code == 0, rerun.output
    assert out.is_file() and not resume.exists()


def test_sigterm_before_anything_is_finished_says_so(tiny_llama: Path, tmp_path: Path) -> None:
    """With --cache (the user's own verdict cache, not an output) there is no resume file: a signal at the samples'
    first byte finishes nothing, and the line says so."""
    out, cache = tmp_path / "run" / "ev.json", tmp_path / "verdicts.sqlite"
    proc = graft_process(*_args(tiny_llama, out), "--cache", cache,
                         env={"GRAFT_TEST_KILL_AFTER": "1", "GRAFT_TEST_KILL_SIGNAL": "TERM"})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert _terminated_line(proc.stderr) == ("terminated (SIGTERM): no output was finished, and nothing "
                                             "half-written was left behind")
    assert not out.parent.exists() or [p.name for p in out.parent.iterdir()] == []
