# ruff: noqa: F811  (fixtures imported from tests/test_bad_input.py are parameters here)
"""Hostile cases for what graft writes: nothing a user owns is ever lost, no input is ever written, and an output is
either absent, the previous complete one or the new complete one, whatever happens meanwhile (another writer, a
folder appearing, SIGTERM, SIGKILL at any byte)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import graft.engines.merge
from graft.io.guard import MARKER, OWNER, clean_stale
from tests.hostile.io_checks import (  # noqa: F401  (fixtures are found by name)
    Models,
    assert_error,
    assert_one_error_line,
    built,
    cli,
    extract_args,
    file_hashes,
    graft_process,
    leftovers,
    m,
    merge_args,
    outdir,
    plan_args,
    tree_hash,
)


def _user_folder(path: Path) -> dict[str, str]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "data").mkdir(exist_ok=True)
    (path / "data" / "results.csv").write_text("a,b\n1,2\n")
    return file_hashes(path)


# -- 1. what appears at --out while graft runs ---------------------------------------------------------------------
@pytest.mark.parametrize("what", ["folder", "empty-folder", "file", "symlink"])
def test_a_destination_that_appears_during_the_merge_is_kept(
    m: Models, outdir: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    out = outdir / "merged"
    made: dict[str, str] = {}
    real = graft.engines.merge._write_folder_files

    def appear_then_continue(*args, **kwargs):
        if what == "folder":
            made.update(_user_folder(out))
        elif what == "empty-folder":
            out.mkdir()
        elif what == "file":
            out.write_text("mine")
        else:
            out.symlink_to(m.target)
        return real(*args, **kwargs)

    monkeypatch.setattr(graft.engines.merge, "_write_folder_files", appear_then_continue)
    before = file_hashes(m.target, m.vector)
    assert_error(cli(*merge_args(m.target, m.vector, out)), 5, str(out), "appeared")
    assert file_hashes(m.target, m.vector) == before
    if what == "folder":
        assert file_hashes(out) == made
    elif what == "empty-folder":
        assert out.is_dir() and not any(out.iterdir())
    elif what == "file":
        assert out.read_text() == "mine"
    else:
        assert out.is_symlink() and out.resolve() == m.target.resolve()
    assert not leftovers(outdir)


def test_two_merges_to_the_same_out_never_both_succeed(m: Models, outdir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A second merge finishes (in another process) while the first is running: the first is refused, the second's
    output stays byte for byte."""
    out = outdir / "merged"
    real = graft.engines.merge._write_folder_files
    other: dict[str, str] = {}

    def another_merge_finishes_first(*args, **kwargs):
        proc = graft_process(*merge_args(m.target, m.vector, out, "--scale", "0.5"))
        assert proc.returncode == 0, proc.stderr
        other.update(file_hashes(out))
        return real(*args, **kwargs)

    monkeypatch.setattr(graft.engines.merge, "_write_folder_files", another_merge_finishes_first)
    assert_error(cli(*merge_args(m.target, m.vector, out)), 5, str(out))
    assert other and file_hashes(out) == other
    assert not leftovers(outdir)


def test_a_user_folder_swapped_in_under_force_is_kept(m: Models, outdir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--force was checked against a previous graft output; a user folder put there meanwhile is not replaced."""
    out = outdir / "merged"
    assert cli(*merge_args(m.target, m.vector, out)).exit_code == 0
    real = graft.engines.merge._write_folder_files
    made: dict[str, str] = {}

    def swap(*args, **kwargs):
        shutil.rmtree(out)
        made.update(_user_folder(out))
        return real(*args, **kwargs)

    monkeypatch.setattr(graft.engines.merge, "_write_folder_files", swap)
    assert_error(cli(*merge_args(m.target, m.vector, out, "--force")), 5, str(out))
    assert file_hashes(out) == made
    assert not leftovers(outdir)


# -- 2. what --force may replace -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["merge", "extract"])
def test_force_never_replaces_a_folder_graft_did_not_make(m: Models, outdir: Path, command: str) -> None:
    out = outdir / "project"
    mine = _user_folder(out)
    args = merge_args(m.target, m.vector, out) if command == "merge" else extract_args(m.base, m.aligned, out)
    line = assert_error(cli(*args, "--force"), 5, str(out), "not a graft output")
    assert "--force replaces only graft's own outputs" in line
    assert file_hashes(out) == mine
    assert not leftovers(outdir)


def test_force_with_out_dot_in_a_folder_of_unrelated_files(m: Models, tmp_path: Path) -> None:
    work = tmp_path / "work"
    mine = _user_folder(work)
    proc = graft_process(*merge_args(m.target, m.vector, ".", "--force"), cwd=work)
    assert_one_error_line(proc, 5, "not a graft output")
    assert file_hashes(work) == mine
    assert not leftovers(tmp_path)


def test_force_replaces_a_previous_graft_output_and_keeps_nothing_aside(m: Models, outdir: Path) -> None:
    out = outdir / "merged"
    assert cli(*merge_args(m.target, m.vector, out, "--scale", "0.5")).exit_code == 0
    first = file_hashes(out)
    assert (out / MARKER).is_file()
    assert cli(*merge_args(m.target, m.vector, out, "--force")).exit_code == 0
    assert file_hashes(out) != first
    assert sorted(p.name for p in outdir.iterdir()) == ["merged"]


@pytest.mark.parametrize("alias", ["symlink", "symlink-force", "bind-mount"])
def test_an_alias_of_the_target_is_never_an_output(m: Models, outdir: Path, alias: str) -> None:
    """The target reached under another name (a symlink, a bind mount): compared by device and inode."""
    link = outdir / "alias"
    if alias.startswith("symlink"):
        link.symlink_to(m.target)
    else:
        link.mkdir()
        proc = subprocess.run(["mount", "--bind", str(m.target), str(link)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot bind-mount here ({proc.stderr.strip()})")
    # Even a target that is itself a previous graft output is an input: --force never replaces it.
    (m.target / MARKER).write_text("{}")
    before = file_hashes(m.target, m.vector)
    try:
        extra = ["--force"] if alias != "symlink" else []
        assert_error(cli(*merge_args(m.target, m.vector, link, *extra)), 5, "overlaps input")
        assert_error(cli(*merge_args(m.target, m.vector, link / "sub", *extra)), 5, "overlaps input")
        assert file_hashes(m.target, m.vector) == before
        assert not leftovers(outdir, m.target)
    finally:
        if alias == "bind-mount":
            subprocess.run(["umount", str(link)], check=False)


def test_a_symlinked_out_replaces_the_output_it_points_to_and_keeps_the_link(m: Models, outdir: Path) -> None:
    real = outdir / "real"
    assert cli(*merge_args(m.target, m.vector, real, "--scale", "0.5")).exit_code == 0
    link = outdir / "current"
    link.symlink_to(real)
    assert cli(*merge_args(m.target, m.vector, link, "--force")).exit_code == 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert (real / "graft_recipe.yaml").read_text().count("scale: 0.5") == 0
    assert sorted(p.name for p in outdir.iterdir()) == ["current", "real"]


def test_a_dangling_symlink_at_out_is_refused(m: Models, outdir: Path) -> None:
    link = outdir / "dangling"
    link.symlink_to(outdir / "nowhere")
    assert_error(cli(*merge_args(m.target, m.vector, link, "--force")), 5, "dangling symlink")
    assert link.is_symlink() and not (outdir / "nowhere").exists()


# -- 3. every file graft writes goes through the same guard ---------------------------------------------------------
def test_plan_json_never_writes_an_input(m: Models) -> None:
    config = m.target / "config.json"
    before = file_hashes(m.target, m.vector)
    for extra in ([], ["--force"]):
        assert_error(cli(*plan_args(m.target, m.vector, "--json", config, "-q", *extra)), 5, "overlaps input")
        assert_error(cli(*plan_args(m.target, m.vector, "--json", m.vector / "plan.json", "-q", *extra)), 5,
                     "overlaps input")
    assert file_hashes(m.target, m.vector) == before
    assert not leftovers(m.target, m.vector)


def test_plan_json_replaces_only_its_own_file(m: Models, outdir: Path) -> None:
    mine = outdir / "notes.json"
    mine.write_text('{"mine": true}')
    for extra in ([], ["--force"]):
        assert_error(cli(*plan_args(m.target, m.vector, "--json", mine, "-q", *extra)), 5, str(mine))
    assert mine.read_text() == '{"mine": true}'
    plan = outdir / "plan.json"
    assert cli(*plan_args(m.target, m.vector, "--json", plan, "-q")).exit_code == 0
    first = json.loads(plan.read_text())
    assert_error(cli(*plan_args(m.target, m.vector, "--json", plan, "-q")), 5, "--force")
    assert cli(*plan_args(m.target, m.vector, "--json", plan, "-q", "--force", "--scale", "0.5")).exit_code == 0
    assert json.loads(plan.read_text()) != first
    plan.write_text(plan.read_text() + " ")  # edited by the user since: theirs now
    assert_error(cli(*plan_args(m.target, m.vector, "--json", plan, "-q", "--force")), 5, "changed since")
    assert not leftovers(outdir)


def test_eval_results_never_land_in_the_model_or_over_a_user_file(m: Models, outdir: Path) -> None:
    from graft.evals.config import FIXTURES

    data = FIXTURES / "data.yaml"
    before = file_hashes(m.target)
    for out in (m.target / "results.json", m.target / "config.json"):
        assert_error(cli("eval", m.target, "--tasks", "catqa", "--data", data, "--out", out, "--force"), 5,
                     "overlaps input")
    mine = outdir / "results.json"
    mine.write_text("my results")
    assert_error(cli("eval", m.target, "--tasks", "catqa", "--data", data, "--out", mine, "--force"), 5,
                 "not written by graft")
    assert mine.read_text() == "my results"
    assert_error(cli("eval", m.target, "--tasks", "catqa", "--data", data, "--out", outdir / "r.json", "--cache",
                     m.target / "verdicts.sqlite"), 5, "--cache", "overlaps input")
    assert file_hashes(m.target) == before and not (m.target / "verdicts.sqlite").exists()


def test_inspect_and_extract_outputs_inside_an_input_are_refused(m: Models) -> None:
    before = file_hashes(m.base, m.aligned, m.vector)
    assert_error(cli("inspect", "--vector", m.vector, "--out", m.vector / "report", "--no-safelora", "-q"), 5,
                 "overlaps input")
    assert_error(cli(*extract_args(m.base, m.aligned, m.aligned / "tau")), 5, "overlaps input")
    assert file_hashes(m.base, m.aligned, m.vector) == before
    assert not leftovers(m.base, m.aligned, m.vector)


def test_demo_workdir_of_user_files_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    mine = _user_folder(work)
    assert_error(cli("demo", "--workdir", work, "--trials", "0"), 5, str(work), "graft did not make")
    assert file_hashes(work) == mine


# -- 4. SIGTERM, SIGKILL and what dead writers left ------------------------------------------------------------------
def test_sigterm_cleans_up_and_exits_non_zero(m: Models, outdir: Path) -> None:
    out = outdir / "merged"
    proc = graft_process(*merge_args(m.target, m.vector, out),
                         env={"GRAFT_TEST_KILL_AFTER": "20000", "GRAFT_TEST_KILL_SIGNAL": "TERM"})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists() and not leftovers(outdir)


def test_stale_staging_of_dead_writers_is_removed_and_live_ones_kept(m: Models, outdir: Path) -> None:
    import fcntl

    out = outdir / "merged"
    killed = graft_process(*merge_args(m.target, m.vector, out), env={"GRAFT_TEST_KILL_AFTER": "30000"})
    assert killed.returncode == -signal.SIGKILL
    assert leftovers(outdir) and not out.exists()
    dead = outdir / ".merged.graft-partial-999999999"  # no such process
    dead.mkdir()
    (dead / "junk").write_text("x")
    reused = outdir / f".merged.graft-partial-{os.getppid()}-7"  # a live PID that is not the owner: lock is free
    reused.mkdir()
    (reused / OWNER).write_text(json.dumps({"pid": os.getppid()}))
    live = outdir / f".merged.graft-partial-{os.getpid()}-9"  # a live writer holds its lock
    live.mkdir()
    (live / OWNER).write_text(json.dumps({"pid": os.getpid()}))
    other = outdir / ".unrelated.graft-partial-999999999"  # another output's staging: left to its own rerun
    other.mkdir()
    held = os.open(live / OWNER, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        assert cli(*merge_args(m.target, m.vector, out)).exit_code == 0
        assert sorted(p.name for p in outdir.iterdir()) == sorted(["merged", live.name, other.name])
    finally:
        os.close(held)
    assert clean_stale(outdir) and sorted(p.name for p in outdir.iterdir()) == ["merged"]


def _kill_points(total: int, count: int) -> list[int]:
    return sorted({1 + (total * i) // (count - 1) for i in range(count)} | {total + k for k in range(1, 6)})


def _outputs_files(folder: Path) -> dict[str, str]:
    """sha256 of each file of an output by relative path; graft's marker left out (its record of the files holds
    their inodes and times, so two complete outputs differ there)."""
    return {str(Path(k).relative_to(folder)): v for k, v in file_hashes(folder).items() if Path(k).name != MARKER}


@pytest.mark.slow
@pytest.mark.parametrize("force", [False, True])
def test_sigkill_at_any_byte_leaves_nothing_or_a_complete_output(m: Models, outdir: Path, force: bool) -> None:
    """SIGKILL after N bytes written (many N, through the last shard and each commit step): the destination is absent
    or the previous complete output, byte for byte, never partial; a rerun removes what the dead run left."""
    out = outdir / "merged"
    reference = outdir.parent / "reference"
    assert cli(*merge_args(m.target, m.vector, reference)).exit_code == 0
    new = _outputs_files(reference)
    total = sum(p.stat().st_size for p in reference.glob("*.safetensors"))  # what the hook counts, + commit steps
    previous: dict[str, str] | None = None
    if force:
        assert cli(*merge_args(m.target, m.vector, out, "--scale", "0.5")).exit_code == 0
        previous = _outputs_files(out)
    points = _kill_points(total, 22 if force else 8)
    seen = set()
    for point in points:
        args = merge_args(m.target, m.vector, out, *(["--force"] if force else []))
        proc = graft_process(*args, env={"GRAFT_TEST_KILL_AFTER": str(point)})
        state = _outputs_files(out) if out.exists() else None
        if proc.returncode == 0:
            assert state == new, f"kill point {point}: finished but not the new output"
            seen.add("new")
            if not force:
                shutil.rmtree(out)
            else:
                shutil.rmtree(out)
                assert cli(*merge_args(m.target, m.vector, out, "--scale", "0.5")).exit_code == 0
            continue
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert state in (previous, new), f"kill point {point}: the destination is partial"
        seen.add("previous" if state == previous else "new")
        if state == new and force:  # killed after the swap, before the old copy was removed: restore for the next
            shutil.rmtree(out)
            assert cli(*merge_args(m.target, m.vector, out, "--scale", "0.5")).exit_code == 0
        elif state == new:
            shutil.rmtree(out)
    assert "previous" in seen or not force
    # A rerun after a kill cleans every leftover and writes the complete output.
    proc = graft_process(*merge_args(m.target, m.vector, out, *(["--force"] if force else [])),
                         env={"GRAFT_TEST_KILL_AFTER": str(points[len(points) // 2])})
    assert proc.returncode == -signal.SIGKILL
    assert cli(*merge_args(m.target, m.vector, out, "--force")).exit_code == 0
    assert _outputs_files(out) == new
    assert not leftovers(outdir)


def test_demo_and_search_never_take_over_another_commands_output(m: Models, outdir: Path) -> None:
    merged = outdir / "merged"
    assert cli(*merge_args(m.target, m.vector, merged)).exit_code == 0
    before = file_hashes(merged)
    assert_error(cli("demo", "--workdir", merged, "--trials", "0"), 5, "graft merge output")
    assert file_hashes(merged) == before
