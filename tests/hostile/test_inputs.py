# ruff: noqa: F811  (fixtures imported from tests/test_bad_input.py are parameters here)
"""Hostile inputs that are not what they seem: FIFOs, devices, sockets and folders named like weights, symlinks out
of a model folder, pickled weights handed to `graft eval`, and mistyped local paths that look like hub ids. Each is
refused at once (exit 3, one line) or skipped with a warning, never read, followed, unpickled or sent to the hub."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest

from graft.evals.config import FIXTURES
from tests.hostile.io_checks import (  # noqa: F401  (fixtures are found by name)
    INDEX,
    Models,
    assert_error,
    built,
    cli,
    extract_args,
    file_hashes,
    leftovers,
    m,
    merge_args,
    outdir,
    plan_args,
)
from tests.test_bad_input import _pickle_folder, no_unpickling  # noqa: F401

DATA = FIXTURES / "data.yaml"


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail (instead of hanging the suite) if a command blocks for 60 s, e.g. on opening a FIFO."""

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError("graft blocked: it opened something it should have refused")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _single_file(folder: Path, source: Path) -> Path:
    """A copy of `source` whose weights are one file `model.safetensors` (no index): merged shards via graft."""
    from safetensors.torch import save_file

    from graft.testing.layouts import load_state_dict_dir

    folder.mkdir()
    for f in source.iterdir():
        if f.suffix != ".safetensors" and not f.name.endswith(".index.json"):
            shutil.copy(f, folder / f.name)
    save_file(dict(load_state_dict_dir(source)), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _make_special(path: Path, kind: str) -> object:
    """Replace `path` by a non-regular file of `kind`; returns what must stay alive (a bound socket)."""
    if path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(str(path))
        except OSError as exc:  # AF_UNIX paths are limited to ~108 bytes
            pytest.skip(f"cannot bind a socket at {path} ({exc})")
        return sock
    elif kind == "device":
        try:
            os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
        except OSError as exc:
            pytest.skip(f"cannot make a device node here ({exc})")
    return None


# -- 12. non-regular files named like weights -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "folder", "socket", "device"])
@pytest.mark.parametrize("command", ["merge", "plan", "eval", "inspect"])
def test_a_non_regular_weight_file_is_refused_at_once(
    m: Models, tmp_path: Path, outdir: Path, deadline: None, kind: str, command: str
) -> None:
    target = _single_file(tmp_path / "t", m.target)
    keep = _make_special(target / "model.safetensors", kind)
    before = file_hashes(target, m.vector)
    args = {"merge": merge_args(target, m.vector, outdir / "merged"), "plan": plan_args(target, m.vector),
            "eval": ["eval", target, "--tasks", "catqa", "--data", DATA, "--out", outdir / "r.json"],
            "inspect": ["inspect", "--vector", m.vector, "--target", target, "--no-safelora"]}[command]
    what = {"fifo": "a FIFO", "folder": "a folder", "socket": "a socket", "device": "a character device"}[kind]
    assert_error(cli(*args), 3, "model.safetensors", what)
    assert file_hashes(target, m.vector) == before
    assert not any(outdir.iterdir())
    del keep


@pytest.mark.parametrize("where", ["shard", "index", "config", "vector-manifest", "side-file"])
def test_a_fifo_anywhere_graft_reads_is_refused(m: Models, outdir: Path, deadline: None, where: str) -> None:
    path = {"shard": m.target / "model-00002-of-00003.safetensors", "index": m.target / INDEX,
            "config": m.target / "config.json", "vector-manifest": m.vector / "vector.json",
            "side-file": m.target / "tokenizer_config.json"}[where]
    _make_special(path, "fifo")
    result = cli(*merge_args(m.target, m.vector, outdir / "merged"))
    assert_error(result, 3, path.name, "a FIFO")
    assert not any(outdir.iterdir())


def test_a_fifo_recipe_or_results_file_is_refused(m: Models, outdir: Path, tmp_path: Path, deadline: None) -> None:
    recipe, results = tmp_path / "recipe.yaml", tmp_path / "results.json"
    for path in (recipe, results):
        _make_special(path, "fifo")
    assert_error(cli("plan", "-r", recipe), 2, str(recipe), "a FIFO")
    assert_error(cli(*merge_args(m.target, m.vector, outdir / "merged", "--results", results)), 3, str(results),
                 "a FIFO")
    assert not any(outdir.iterdir())


def test_a_fifo_base_shard_in_extract_is_refused(m: Models, outdir: Path, deadline: None) -> None:
    shard = m.base / "model-00001-of-00003.safetensors"
    _make_special(shard, "fifo")
    assert_error(cli(*extract_args(m.base, m.aligned, outdir / "vec")), 3, shard.name, "a FIFO")
    assert not any(outdir.iterdir())


# -- 13. symlinks out of a model folder ------------------------------------------------------------------------------
def test_a_side_file_linking_out_of_the_target_is_skipped_with_a_warning(m: Models, tmp_path: Path,
                                                                       outdir: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("ssh key")
    (m.target / "notes.txt").symlink_to(secret)
    (m.target / "extra").symlink_to(tmp_path, target_is_directory=True)  # a folder link: never walked
    before = file_hashes(m.target, m.vector)
    out = outdir / "merged"
    result = cli(*merge_args(m.target, m.vector, out))
    assert result.exit_code == 0, result.stderr
    assert "notes.txt" in result.stderr and "outside the model folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "notes.txt").exists() and not (out / "extra").exists()
    assert "ssh key" not in "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
    assert file_hashes(m.target, m.vector) == before


def test_a_link_inside_the_folder_is_followed(m: Models, outdir: Path) -> None:
    (m.target / "tokenizer_copy.json").symlink_to("config.json")  # points inside: a normal file for graft
    out = outdir / "merged"
    assert cli(*merge_args(m.target, m.vector, out)).exit_code == 0
    assert (out / "tokenizer_copy.json").read_bytes() == (m.target / "config.json").read_bytes()


@pytest.mark.parametrize("how", ["symlink", "index-dotdot"])
def test_a_weight_file_outside_the_folder_is_refused(m: Models, tmp_path: Path, outdir: Path, how: str) -> None:
    shard = "model-00002-of-00003.safetensors"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(m.target / shard, elsewhere / shard)
    if how == "symlink":
        (m.target / shard).symlink_to(elsewhere / shard)
    else:
        index = json.loads((m.target / INDEX).read_text())
        index["weight_map"] = {k: (f"../elsewhere/{v}" if v == shard else v) for k, v in index["weight_map"].items()}
        (m.target / INDEX).write_text(json.dumps(index))
        shutil.move(elsewhere, m.target.parent / "elsewhere")
    assert_error(cli(*merge_args(m.target, m.vector, outdir / "merged")), 3, shard, "outside the model folder")
    assert not any(outdir.iterdir())


# -- 14. pickled weights, wherever a model is loaded ------------------------------------------------------------------
def test_eval_refuses_pickle_only_weights_unread(
    m: Models, tmp_path: Path, outdir: Path, no_unpickling: list[str]
) -> None:
    sentinel = tmp_path / "unpickled"
    folder = _pickle_folder(tmp_path / "pickled", m.aligned, sentinel)
    before = file_hashes(folder)
    line = assert_error(cli("eval", folder, "--tasks", "catqa", "--data", DATA, "--out", outdir / "r.json"), 3,
                        "pytorch_model.bin")
    assert "never unpickles" in line
    assert no_unpickling == [] and not sentinel.exists()
    assert file_hashes(folder) == before and not any(outdir.iterdir())


def test_resident_model_and_guard_judge_refuse_pickles(m: Models, tmp_path: Path, no_unpickling: list[str]) -> None:
    """Every other loader goes through the same check (HFBackend.load): the search's resident model, a guard judge."""
    from graft.errors import InputError
    from graft.evals.generation import HFBackend

    folder = _pickle_folder(tmp_path / "pickled", m.aligned, tmp_path / "unpickled")
    with pytest.raises(InputError, match="never unpickles"):
        HFBackend.load(folder, device="cpu")
    assert_error(cli("eval", m.aligned, "--tasks", "catqa", "--data", DATA, "--judge", f"guard:{folder}",
                     "--out", tmp_path / "r.json"), 3, "pytorch_model.bin")
    assert no_unpickling == []


# -- 15. mistyped local paths are never sent to the hub --------------------------------------------------------------
@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(str(kwargs.get("repo_id") or args))
        raise AssertionError("graft sent a local-looking name to the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    return calls


@pytest.mark.parametrize("name", ["models/targt", "./targt", "~/no-such-graft-model", "models/a/b",
                                  "org/model.safetensors", "org/config.json", "targt"])
@pytest.mark.parametrize("command", ["merge", "plan", "extract", "eval", "inspect"])
def test_a_mistyped_local_path_is_no_such_folder(
    m: Models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_hub: list[str], name: str, command: str
) -> None:
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    args = {"merge": merge_args(name, m.vector, tmp_path / "out"), "plan": plan_args(name, m.vector),
            "extract": extract_args(name, m.aligned, tmp_path / "out"),
            "eval": ["eval", name, "--tasks", "catqa", "--data", DATA, "--out", tmp_path / "r.json"],
            "inspect": ["inspect", "--vector", m.vector, "--target", name, "--no-safelora"]}[command]
    assert_error(cli(*args), 3, Path(name).name, "no such")  # named as typed (typer normalises ./x to x)
    assert no_hub == []
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)


def test_a_hub_id_without_a_local_lookalike_still_goes_to_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    no_hub: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    from graft.core.model_ids import looks_like_hub_id

    assert looks_like_hub_id("Qwen/Qwen2.5-VL-7B-Instruct") and looks_like_hub_id("mistralai/Mistral-7B-v0.1")
    cli(*plan_args("org/name", tmp_path))
    assert no_hub == ["org/name"]


def test_a_mistyped_path_in_a_recipe_is_no_such_folder(m: Models, tmp_path: Path, no_hub: list[str]) -> None:
    """Recipe paths resolve against the recipe's folder: `models/targt` there, beside a `models/`, is local."""
    (tmp_path / "models").mkdir()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"graft_recipe: 1\ntarget: models/targt\nvector: {m.vector}\nout: merged\n")
    assert_error(cli("merge", "--recipe", recipe, "-q"), 3, "targt", "no such")
    assert no_hub == [] and not (tmp_path / "merged").exists()
