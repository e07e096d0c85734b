"""`--force` replaces a previous graft output folder only while it holds nothing but what graft wrote: a file the user
added or edited, or a folder they made in it, is refused by name (exit 5, one line) and the folder left byte for
byte as it was; an untouched output is still replaced."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from graft.cli import app
from graft.errors import OutputError
from graft.io.guard import MARKER, write_file
from graft.testing.layouts import TextSpec, build_target, build_text_pair


def cli(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` with its bytes' sha256 ('dir' for a folder): compared before and after."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def assert_refused(result: Result, *names: str) -> None:
    assert result.exit_code == 5, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    spec = TextSpec()
    base, aligned = build_text_pair(root / "pair", spec, max_shard_size="40KB")
    target = build_target("llava", root / "llava", aligned, spec, max_shard_size="40KB")
    return {"base": base, "aligned": aligned, "target": target}


def _merge(models: dict[str, Path], out: Path) -> list[object]:
    vector = out.parent / "vector-for-merge"
    if not vector.exists():
        assert cli("extract", "-b", models["base"], "-a", models["aligned"], "-o", vector, "-q").exit_code == 0
    return ["merge", "-t", models["target"], "--vector", vector, "-o", out, "-q"]


def _extract(models: dict[str, Path], out: Path) -> list[object]:
    return ["extract", "-b", models["base"], "-a", models["aligned"], "-o", out, "-q"]


def _examples(models: dict[str, Path], out: Path) -> list[object]:
    return ["examples", out]


COMMANDS: dict[str, Callable[[dict[str, Path], Path], list[object]]] = {
    "merge": _merge, "extract": _extract, "examples": _examples}


def _a_written_file(out: Path) -> Path:
    """A file graft wrote in the output: a small text one (a config or an example), nested where there is one."""
    files = [p for p in sorted(out.rglob("*")) if p.is_file() and p.suffix in (".json", ".yaml", ".yml", ".md")
             and not p.name.startswith(".")]
    return max(files, key=lambda p: (len(p.relative_to(out).parts), p.name))


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("change", ["added_file", "edited_file", "added_folder", "nested_graft_output"])
def test_force_refuses_a_folder_the_user_changed(models: dict[str, Path], tmp_path: Path, command: str,
                                                 change: str) -> None:
    out = tmp_path / "out"
    args = COMMANDS[command](models, out)
    assert cli(*args).exit_code == 0
    if change == "added_file":
        culprit = out / "my_eval_results.json"
        culprit.write_text('{"mine": true}\n')
    elif change == "edited_file":
        culprit = _a_written_file(out)
        with open(culprit, "a") as handle:
            handle.write("\n# my edit\n")
    elif change == "added_folder":
        culprit = out / "notes"
        culprit.mkdir()
    else:  # `graft examples OUT/ex`: a graft output of the user's own inside this one
        culprit = out / "ex"
        assert cli("examples", culprit).exit_code == 0
    before = snapshot(out)
    assert_refused(cli(*args, "--force"), str(culprit), "move it out")
    assert snapshot(out) == before
    assert not [p for p in tmp_path.iterdir() if ".graft-" in p.name]  # no staging left beside it


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_force_still_replaces_an_untouched_output(models: dict[str, Path], tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    args = COMMANDS[command](models, out)
    assert cli(*args).exit_code == 0
    record = json.loads((out / MARKER).read_text())["contents"]
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*")} - {MARKER}
    assert set(record) == on_disk  # the marker records every file and folder graft wrote
    first = snapshot(out)
    touched = _a_written_file(out)
    os.utime(touched, ns=(10**18, 10**18))  # same bytes, another mtime and ctime: judged by its sha256, still graft's
    assert cli(*args, "--force").exit_code == 0
    assert os.stat(touched).st_mtime_ns != 10**18  # a new output, not the old one left in place
    assert set(snapshot(out)) == set(first)


def test_a_copied_output_is_checked_by_content(models: dict[str, Path], tmp_path: Path) -> None:
    """A copy has new inodes and ctimes: its files are compared by sha256, so an identical copy is replaced and an
    edited one (same size, mtime put back) is refused."""
    out = tmp_path / "out"
    assert cli("examples", out).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert cli("examples", copy, "--force").exit_code == 0
    shutil.rmtree(copy)
    shutil.copytree(out, copy)
    edited = copy / "search" / "eval.yaml"
    st = os.stat(edited)
    text = edited.read_bytes()
    edited.write_bytes(text[:-2] + b"#\n")  # same size
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    before = snapshot(copy)
    assert_refused(cli("examples", copy, "--force"), str(edited), "changed since graft wrote it")
    assert snapshot(copy) == before


def test_a_folder_without_a_record_is_refused(tmp_path: Path) -> None:
    """A marker without a record (an older graft, or a fill that was killed): graft cannot tell what is the user's."""
    out = tmp_path / "old"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"format": "graft-output", "kind": "examples"}) + "\n")
    (out / "recipe.yaml").write_text("target: mine\n")
    before = snapshot(out)
    assert_refused(cli("examples", out, "--force"), str(out), "older graft", "delete the folder yourself")
    assert snapshot(out) == before


def test_inspect_report_keeps_what_the_user_added(tmp_path: Path, models: dict[str, Path]) -> None:
    vector = tmp_path / "vector"
    assert cli("extract", "-b", models["base"], "-a", models["aligned"], "-o", vector, "-q").exit_code == 0
    out = tmp_path / "report"
    args = ["inspect", "--vector", vector, "--target", models["target"], "--out", out, "-q"]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    assert cli(*args, "--force").exit_code == 0
    (out / "figures-for-my-paper.png").write_bytes(b"mine")
    before = snapshot(out)
    assert_refused(cli(*args, "--force"), str(out / "figures-for-my-paper.png"))
    assert snapshot(out) == before


def test_a_result_graft_writes_into_an_output_later_is_kept_by_the_next_force(models: dict[str, Path],
                                                                             tmp_path: Path) -> None:
    """`graft eval --out OUT/results.json` beside a merged model: that file may be rewritten under --force (graft
    recorded it beside it), but it is not part of the merge, so the next `merge --force` keeps it and says so."""
    out = tmp_path / "out"
    args = _merge(models, out)
    assert cli(*args).exit_code == 0
    results = out / "results.json"
    write_file(results, '{"run": 1}\n')
    write_file(results, '{"run": 2}\n', force=True)
    assert results.read_text() == '{"run": 2}\n'
    before = snapshot(out)
    assert_refused(cli(*args, "--force"), str(results), "added to the graft output")
    assert snapshot(out) == before
    results.write_text('{"run": "edited"}\n')
    with pytest.raises(OutputError, match="changed since"):
        write_file(results, '{"run": 3}\n', force=True)
    assert results.read_text() == '{"run": "edited"}\n'
