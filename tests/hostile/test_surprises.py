# ruff: noqa: F811  (fixtures imported from tests/test_bad_input.py are parameters here)
"""Things that used to pass silently: a target deeper than the vector (τ in its first layers only), an extraction
from one model twice (a τ of zeros), an input rewritten while a merge or extraction read it (half old, half new, exit
0), and `plan --json /dev/stdout` into a pipe (an error naming a /proc path)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import graft.engines.merge
import graft.vector
from tests.test_bad_input import (  # noqa: F401 (fixtures)
    INDEX,
    SHARD2,
    Models,
    assert_error,
    assert_no_output,
    built,
    cli,
    extract_args,
    m,
    merge_args,
    outdir,
    plan_args,
    tree_hash,
)


# -- a target deeper than the vector ------------------------------------------------------------------------------
def _drop_last_layer(vector: Path) -> int:
    """Keep the vector's layers but its last: a vector from a model one layer shallower than the target."""
    manifest = json.loads((vector / "vector.json").read_text())
    last = manifest["num_layers"] - 1
    gone = [n for n, t in manifest["tensors"].items() if t["layer"] == last]
    tensors = {k: v for k, v in load_file(vector / "vector.safetensors").items() if k not in gone}
    save_file(tensors, str(vector / "vector.safetensors"), metadata={"format": "pt"})
    manifest["tensors"] = {n: t for n, t in manifest["tensors"].items() if n not in gone}
    manifest["num_layers"] = last
    (vector / "vector.json").write_text(json.dumps(manifest))
    return last


def test_a_target_deeper_than_the_vector_is_warned_about_and_strict_refuses_it(m: Models, outdir: Path) -> None:
    last = _drop_last_layer(m.vector)
    result = cli(*plan_args(m.target, m.vector, "-q"))
    assert result.exit_code == 0, result.output
    warning = f"the target has {last + 1} layers but the vector {last}: target layers {last} get no τ"
    assert warning in result.stderr
    result = cli(*merge_args(m.target, m.vector, outdir / "merged"))
    assert result.exit_code == 0 and warning in result.stderr, result.output
    assert_error(cli(*merge_args(m.target, m.vector, outdir / "strict", "--strict")), 4, warning, "--strict")
    assert_no_output(outdir / "strict")


def test_a_vector_as_deep_as_the_target_gives_no_such_warning(m: Models) -> None:
    result = cli(*plan_args(m.target, m.vector, "-q"))
    assert result.exit_code == 0 and "get no τ" not in result.stderr, result.output


# -- extract from one model twice -----------------------------------------------------------------------------------
def test_extract_from_the_same_model_twice_is_refused(m: Models, outdir: Path) -> None:
    assert_error(cli(*extract_args(m.base, m.base, outdir / "vec")), 2, "--base and --aligned are the same model")
    os.symlink(m.base, outdir / "alias")
    assert_error(cli(*extract_args(m.base, outdir / "alias", outdir / "vec")), 2, "same model")
    assert_no_output(outdir / "vec")


def test_extract_from_identical_copies_writes_no_zero_vector(m: Models, outdir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(m.base, copy)
    assert_error(cli(*extract_args(m.base, copy, outdir / "vec")), 4, "zero in every tensor", str(copy))
    assert_no_output(outdir / "vec")


# -- an input rewritten while it is read ------------------------------------------------------------------------------
def _rewrite_same_size(path: Path) -> None:
    """New bytes, same size, mtime put back: only the inode's ctime tells."""
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _replace(path: Path) -> None:
    """A new file renamed over the old one (how downloaders write)."""
    fresh = path.with_name(path.name + ".new")
    shutil.copy(path, fresh)
    fresh.rename(path)


CHANGES: dict[str, tuple[Callable[[Models], Path], Callable[[Path], None]]] = {
    "target-shard-same-size": (lambda m: m.target / SHARD2, _rewrite_same_size),
    "target-shard-replaced": (lambda m: m.target / SHARD2, _replace),
    "target-shard-grown": (lambda m: m.target / SHARD2, lambda p: p.write_bytes(p.read_bytes() + b"\0" * 8)),
    "target-index": (lambda m: m.target / INDEX, _replace),
    "target-config": (lambda m: m.target / "config.json", _rewrite_same_size),
    "target-side-file": (lambda m: m.target / "tokenizer_config.json", _rewrite_same_size),
    "vector-shard": (lambda m: m.vector / "vector.safetensors", _rewrite_same_size),
    "vector-manifest": (lambda m: m.vector / "vector.json", _replace),
}


@pytest.mark.parametrize("change", CHANGES, ids=CHANGES.keys())
def test_an_input_rewritten_during_a_merge_discards_the_output(m: Models, outdir: Path,
                                                               monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    which, how = CHANGES[change]
    path = which(m)
    if not path.exists():
        path.write_text('{"a": 1}')  # a side file to change
    real = graft.engines.merge._write_shards

    def write_then_change(*args: object, **kwargs: object) -> None:
        real(*args, **kwargs)  # every shard written from the old bytes; then the input moves under the merge
        how(path)

    monkeypatch.setattr(graft.engines.merge, "_write_shards", write_then_change)
    assert_error(cli(*merge_args(m.target, m.vector, outdir / "merged")), 3, str(path), "changed while graft was "
                 "reading it", "nothing was written")
    assert_no_output(outdir / "merged")


def test_an_aligned_shard_rewritten_during_extract_discards_the_vector(m: Models, outdir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real = graft.vector._write_difference
    shard = sorted(m.aligned.glob("*.safetensors"))[0]

    def write_then_change(*args: object, **kwargs: object) -> object:
        stats = real(*args, **kwargs)
        _rewrite_same_size(shard)
        return stats

    monkeypatch.setattr(graft.vector, "_write_difference", write_then_change)
    assert_error(cli(*extract_args(m.base, m.aligned, outdir / "vec")), 3, str(shard), "the aligned changed")
    assert_no_output(outdir / "vec")


def test_an_untouched_input_still_merges(m: Models, outdir: Path) -> None:
    os.utime(m.target / SHARD2)  # read access and a touch before the merge starts are fine
    assert cli(*merge_args(m.target, m.vector, outdir / "merged")).exit_code == 0


# -- plan --json into a pipe ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["/dev/stdout", "-"])
def test_plan_json_to_standard_output_in_a_pipe(m: Models, where: str) -> None:
    code = "import sys; from graft.cli import main; sys.argv[0] = 'graft'; main()"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, plan_args(m.target, m.vector, "--json", where))],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)  # stdout holds the JSON alone; the table went to stderr
    assert plan["target"] == str(m.target) and "graft plan" in proc.stderr and "/proc/" not in proc.stderr


def test_plan_json_to_dev_null_writes_nothing_else(m: Models) -> None:
    before = tree_hash(m.target, m.vector)
    assert cli(*plan_args(m.target, m.vector, "--json", "/dev/null", "-q")).exit_code == 0
    assert tree_hash(m.target, m.vector) == before


# -- merge --results: scores of other weights are never published as this model's ------------------------------------
def test_results_of_other_weights_are_refused_naming_both_hashes(m: Models, outdir: Path) -> None:
    from graft.evals.config import FIXTURES
    from graft.io.checkpoint import weights_sha256

    merged = outdir / "merged"
    assert cli(*merge_args(m.target, m.vector, merged, "--scale", "0.5")).exit_code == 0
    results = {}
    for name, model in (("target", m.target), ("merged", merged)):
        results[name] = outdir / f"{name}.json"
        result = cli("eval", model, "--tasks", "catqa", "--data", FIXTURES / "data.yaml", "--limit", "2",
                     "--out", results[name], "--device", "cpu", "-q")
        assert result.exit_code == 0, result.output
        assert json.loads(results[name].read_text())["model"]["weights_sha256"] == weights_sha256(model)
    again = outdir / "again"
    theirs, ours = weights_sha256(m.target), weights_sha256(merged)
    assert_error(cli(*merge_args(m.target, m.vector, again, "--scale", "0.5", "--results", results["target"])), 4,
                 str(results["target"]), theirs, ours, f"graft eval {again}")
    assert_no_output(again)
    result = cli(*merge_args(m.target, m.vector, again, "--scale", "0.5", "--results", results["merged"]))
    assert result.exit_code == 0, result.output
    assert "model-index" in (again / "README.md").read_text()
    # A results file that does not say whose weights it scored is refused before any work.
    data = json.loads(results["merged"].read_text())
    del data["model"]["weights_sha256"]
    results["merged"].write_text(json.dumps(data))
    assert_error(cli(*merge_args(m.target, m.vector, outdir / "never", "--results", results["merged"])), 3,
                 "model.weights_sha256")
    assert_no_output(outdir / "never")
