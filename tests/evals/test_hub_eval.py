"""`graft eval` on a hub id: the same resolution as extract/merge (local-looking names never reach the hub), the
revision asked for, and the commit it resolved to recorded in results.json. The hub is a cache folder built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.evals.config import FIXTURES
from tests.test_hub import COMMIT, _cache_repo, _forbid_download, offline  # noqa: F401  (offline: autouse)

runner = CliRunner()


def run_eval(model: object, out: Path, *extra: str):
    return runner.invoke(app, ["eval", str(model), "--data", str(FIXTURES / "data.yaml"), "--tasks", "pubmedqa,catqa",
                               "--limit", "3", "--max-new-tokens", "4", "--dtype", "float32", "--out", str(out),
                               *extra])


def test_eval_of_a_hub_id_scores_like_the_local_folder(tiny_llama: Path, offline: Path,  # noqa: F811
                                                       tmp_path: Path) -> None:
    _cache_repo(offline, "org/llama", tiny_llama)
    local, hub = tmp_path / "local.json", tmp_path / "hub.json"
    assert run_eval(tiny_llama, local).exit_code == 0
    result = run_eval("org/llama", hub, "--revision", "main")
    assert result.exit_code == 0, result.output
    a, b = json.loads(local.read_text()), json.loads(hub.read_text())
    assert {k: v["score"] for k, v in a["benchmarks"].items()} == {k: v["score"] for k, v in b["benchmarks"].items()}
    assert a["model"]["content_hash"] == b["model"]["content_hash"]
    assert (b["model"]["hub"], b["model"]["revision"]) == ("org/llama", COMMIT)  # main resolved to its commit
    assert (a["model"]["hub"], a["model"]["revision"]) == (None, None)


@pytest.mark.parametrize("spec", ["./org/llama", "models/llama/v2", "llama.safetensors", "/no/such/model"])
def test_eval_of_a_missing_local_path_never_reaches_the_hub(spec: str, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    _forbid_download(monkeypatch)
    result = run_eval(spec, tmp_path / "r.json")
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "no such model folder" in result.stderr and spec in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_eval_of_an_uncached_hub_id_offline(tmp_path: Path) -> None:
    result = run_eval("org/not-cached", tmp_path / "r.json", "--revision", "v2")
    assert result.exit_code == 3 and "org/not-cached@v2" in result.stderr and result.stderr.count("\n") == 1


def test_eval_revision_of_a_local_folder_is_a_usage_error(tiny_llama: Path, tmp_path: Path) -> None:
    result = run_eval(tiny_llama, tmp_path / "r.json", "--revision", "v2")
    assert result.exit_code == 2 and "--revision v2" in result.stderr and "not a hub id" in result.stderr
