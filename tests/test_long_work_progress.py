"""Long work says how far it is (extract's bar has a total, inspect counts tensors), and every command that writes an
output refuses an occupied one before the work: spies on the expensive step show it never ran."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from graft.cli import app
from graft.engines.extract import extract_vector
from graft.errors import OutputError
from graft.evals.config import FIXTURES
from graft.inspect.scores import score_tensors, tensor_table

runner = CliRunner()


def source_bytes(folder: Path, names: set[str]) -> int:
    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(file, "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if name in names:
                    tensor = handle.get_tensor(name)
                    total += tensor.numel() * tensor.element_size()
    return total


def test_extract_says_its_total_first_and_counts_up_to_it(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    totals: list[int] = []
    counted: list[int] = []
    result = extract_vector(world.base, world.aligned, tmp_path / "v", progress=counted.append,
                            on_total=lambda total: totals.append(total) or counted.clear())
    # both sources' bytes of every extracted tensor, read independently with safetensors
    expected = 2 * source_bytes(Path(world.base), set(result.manifest.tensors))
    assert totals == [expected] and sum(counted) == expected and len(counted) >= len(result.manifest.tensors)


def test_inspect_counts_tensors_as_it_scores_them(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    calls: list[tuple[int, int]] = []
    stats = score_tensors(world.vector, world.target, world.origin, on_tensor=lambda d, t: calls.append((d, t)))
    n = len(tensor_table(stats))
    assert n > 1 and calls == [(i, n) for i in range(1, n + 1)]
    # off a terminal (a CI log): plain lines, the last one always, at most every few seconds before it
    result = runner.invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("inspect: ")]
    assert lines and lines[-1].startswith(f"inspect: {n}/{n} tensors") and "ETA" in lines[-1]
    assert len(lines) < n  # not a line per tensor
    quiet = runner.invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target), "-q"])
    assert quiet.exit_code == 0 and "inspect: " not in quiet.stderr


def never(name: str):
    def spy(*args, **kwargs):
        raise AssertionError(f"{name} ran although the output was refused")
    return spy


@pytest.fixture()
def occupied(tmp_path: Path) -> Path:
    """An output path holding a user's file: every command must refuse it, whatever it writes."""
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    return out


def test_every_command_refuses_an_occupied_output_before_the_work(make_world, occupied: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    world = make_world("causal")
    taken_file = tmp_path / "taken.json"
    taken_file.write_text("{}\n")
    monkeypatch.setattr("graft.engines.extract._write_difference", never("extraction"))
    monkeypatch.setattr("graft.engines.merge._write_shards", never("merge"))
    monkeypatch.setattr("graft.inspect.scores.score_tensors", never("scoring"))
    monkeypatch.setattr("graft.evals.generation.HFBackend.load", never("model loading"))
    cases = {
        "extract": ["extract", "--base", str(world.base), "--aligned", str(world.aligned), "--out", str(occupied)],
        "merge": ["merge", "-t", str(world.target), "--vector", str(world.vector), "-o", str(occupied)],
        "inspect": ["inspect", "--vector", str(world.vector), "--target", str(world.target), "--out", str(occupied)],
        "eval": ["eval", str(world.target), "--tasks", "catqa", "--data", str(FIXTURES / "data.yaml"), "--out",
                 str(taken_file)],
        "plan --json": ["plan", "-t", str(world.target), "--vector", str(world.vector), "--json", str(taken_file)],
    }
    for command, args in cases.items():
        for force in ([], ["--force"]):  # --force never replaces what graft did not write either
            result = runner.invoke(app, [*args, *force])
            assert result.exit_code == OutputError.exit_code, (command, force, result.output)
            assert "ran although" not in result.output
            line = " ".join(result.stderr.split())
            assert line.startswith("error:") and ("taken" in line), (command, line)
    assert (occupied / "notes.txt").read_text() == "mine\n" and taken_file.read_text() == "{}\n"


def test_bytes_in_a_log_are_plain_lines_with_total_and_eta() -> None:
    """extract and merge off a terminal (a CI log): a line at most every few seconds and one at the end, in MB of the
    total, with the rate and the ETA; nothing for work under a megabyte."""
    import io
    import re

    from graft.cli.console import LoggedBytes, byte_progress
    from graft.display import GraftConsole

    buf = io.StringIO()
    console = GraftConsole(file=buf, highlight=False)
    progress = byte_progress(False, console)
    assert isinstance(progress, LoggedBytes)
    with progress:
        task = progress.add_task("extract", total=None)
        progress.update(task, total=50_000_000)
        for _ in range(100):
            progress.advance(task, 500_000)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("extract: 0/50 MB") and "ETA" in lines[0]
    assert re.fullmatch(r"extract: 50/50 MB, [\d.]+ MB/s, ETA 0 s", lines[-1]) and len(lines) <= 3
    small = io.StringIO()
    with byte_progress(False, GraftConsole(file=small)) as tiny:
        task = tiny.add_task("merge", total=90_000)
        tiny.advance(task, 90_000)
    assert small.getvalue() == ""
    assert byte_progress(True, GraftConsole(file=io.StringIO())).disable  # -q: rich's bar, switched off
