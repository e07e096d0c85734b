"""`graft push` and `--push-to-hub`: the exact calls made on huggingface_hub's HfApi (replaced here by a recorder, so
nothing leaves the machine), what a refused push refuses, and a vector that goes to the hub and comes back."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import huggingface_hub
import huggingface_hub.constants
import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import filter_repo_objects
from typer.testing import CliRunner, Result

from graft.cli import app
from graft.io.guard import MARKER, OWNER
from graft.io.hub import VECTOR_PATTERNS
from tests.test_hub import COMMIT, _cache_repo, _fake_response, offline, tree_hash  # noqa: F401  (offline: autouse)

TOKEN = "hf_graft_test_token"


class FakeApi:
    """Records every HfApi call graft makes; `fail` maps a method name to the exception it raises."""

    calls: ClassVar[list[tuple[str, dict]]] = []
    tokens: ClassVar[list[str | None]] = []
    fail: ClassVar[dict[str, Exception]] = {}

    def __init__(self, token: str | None = None, **kwargs: object) -> None:
        FakeApi.tokens.append(token)

    def _record(self, name: str, kwargs: dict) -> None:
        FakeApi.calls.append((name, kwargs))
        if name in FakeApi.fail:
            raise FakeApi.fail[name]

    def create_repo(self, repo_id: str, **kwargs: object) -> str:
        self._record("create_repo", {"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id: str, **kwargs: object) -> None:
        self._record("create_branch", {"repo_id": repo_id, **kwargs})

    def create_commit(self, repo_id: str, operations: list, **kwargs: object) -> SimpleNamespace:
        """What the hub would receive: each file's path in the repository and its bytes."""
        contents = {}
        for op in operations:
            assert isinstance(op, huggingface_hub.CommitOperationAdd)
            source = op.path_or_fileobj
            contents[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        self._record("create_commit", {"repo_id": repo_id, **kwargs, "uploaded": sorted(contents),
                                       "contents": contents})
        return SimpleNamespace(oid=COMMIT, commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}")


@pytest.fixture(autouse=True)
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[FakeApi]:
    FakeApi.calls, FakeApi.tokens, FakeApi.fail = [], [], {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    return FakeApi


def cli(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def merged(make_world, tmp_path: Path) -> Path:
    world = make_world("causal", sharded=True)
    out = tmp_path / "merged"
    result = cli("merge", "-t", world.target, "--vector", world.vector, "-o", out, "--scale", "0.5", "-q")
    assert result.exit_code == 0, result.output
    return out


def test_push_a_merged_folder(merged: Path) -> None:
    before = tree_hash(merged)
    result = cli("push", merged, "org/grafted")
    assert result.exit_code == 0, result.output
    assert [name for name, _ in FakeApi.calls] == ["create_repo", "create_commit"]
    assert FakeApi.tokens == [TOKEN]
    create, upload = FakeApi.calls[0][1], FakeApi.calls[1][1]
    assert create == {"repo_id": "org/grafted", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "org/grafted"
    assert upload["revision"] is None and upload["repo_type"] == "model"
    assert upload["commit_message"] == "Upload merged model made with graft"
    on_disk = sorted(str(p.relative_to(merged)) for p in merged.rglob("*") if p.is_file())
    assert sorted(upload["uploaded"]) == sorted(set(on_disk) - {MARKER})  # everything but graft's marker
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) <= set(upload["uploaded"])
    card = ModelCard.load(merged / "README.md")  # what the hub will read
    assert {"graft", "safety", "merge"} <= set(card.data.tags)
    assert COMMIT in result.stdout and tree_hash(merged) == before  # pushing writes nothing locally


def test_push_public_to_a_branch_with_a_message(merged: Path) -> None:
    result = cli("push", merged, "org/grafted", "--public", "--branch", "trial-7", "-m", "λ search, trial 7",
                 "--token", "hf_other")
    assert result.exit_code == 0, result.output
    assert [name for name, _ in FakeApi.calls] == ["create_repo", "create_branch", "create_commit"]
    assert FakeApi.tokens == ["hf_other"]  # --token beats HF_TOKEN
    assert FakeApi.calls[0][1]["private"] is False
    assert FakeApi.calls[1][1] == {"repo_id": "org/grafted", "branch": "trial-7", "repo_type": "model",
                                   "exist_ok": True}
    upload = FakeApi.calls[2][1]
    assert upload["revision"] == "trial-7" and upload["commit_message"] == "λ search, trial 7"


def test_pushed_vector_comes_back_from_the_hub(make_world, offline: Path, tmp_path: Path) -> None:  # noqa: F811
    """Push a vector, lay what was uploaded out as the hub cache would hold it, and graft from `org/vec`: the
    output is byte-identical to grafting from the local folder."""
    world = make_world("causal")
    result = cli("push", world.vector, "org/vec")
    assert result.exit_code == 0, result.output
    upload = FakeApi.calls[-1][1]
    assert upload["commit_message"] == "Upload vector made with graft"
    assert "vector.json" in upload["uploaded"] and MARKER not in upload["uploaded"]
    repo = tmp_path / "uploaded"
    for name in upload["uploaded"]:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(upload["contents"][name])
    assert set(filter_repo_objects(upload["uploaded"], allow_patterns=VECTOR_PATTERNS)) == set(upload["uploaded"])
    _cache_repo(offline, "org/vec", repo)
    for out, vector in (("local", world.vector), ("hub", "org/vec")):
        result = cli("merge", "-t", world.target, "--vector", vector, "-o", tmp_path / out, "-q")
        assert result.exit_code == 0, result.output
    for file in (tmp_path / "local").glob("*.safetensors"):
        assert file.read_bytes() == (tmp_path / "hub" / file.name).read_bytes()
    recipe = (tmp_path / "hub" / "graft_recipe.yaml").read_text()
    assert f"vector: org/vec@{COMMIT}" in recipe  # pinned to the commit the hub resolved


def _texts(upload: dict) -> dict[str, str]:
    return {name: data.decode() for name, data in upload["contents"].items() if not name.endswith(".safetensors")}


def test_a_pushed_merge_names_no_local_path_and_rebuilds_from_what_was_pushed(make_world, tmp_path: Path) -> None:
    """The card and recipe pushed name local inputs by folder name with their files' sha256 (the local folder keeps
    its absolute paths, and its byte-for-byte rebuild); put those folders beside the pushed recipe and it rebuilds
    the same weights."""
    world = make_world("causal", sharded=True)
    work = tmp_path / "private" / "home"
    shutil.copytree(world.target, work / "med-model")
    shutil.copytree(world.vector, work / "safety-vec")
    merged = tmp_path / "merged"
    assert cli("merge", "-t", work / "med-model", "--vector", work / "safety-vec", "-o", merged, "--scale", "0.5",
               "-q").exit_code == 0
    before = tree_hash(merged)
    result = cli("push", merged, "org/grafted")
    assert result.exit_code == 0, result.output
    upload = FakeApi.calls[-1][1]
    texts = _texts(upload)
    assert not [name for name, text in texts.items() if str(tmp_path) in text], "a local path was published"
    assert str(work) in (merged / "graft_recipe.yaml").read_text() and tree_hash(merged) == before  # local: as is
    recipe = yaml.safe_load(texts["graft_recipe.yaml"])
    assert (recipe["target"], recipe["vector"]) == ("med-model", "safety-vec")
    card = texts["README.md"]
    for file in sorted((work / "med-model").glob("*.safetensors")):
        assert f"`{file.name}` sha256 `{hashlib.sha256(file.read_bytes()).hexdigest()}`" in card
    assert "graft merge --recipe graft_recipe.yaml --out rebuilt" in card and "beside graft_recipe.yaml" in card
    assert yaml.safe_load(card.split("```yaml\n", 1)[1].split("```", 1)[0]) == recipe
    assert ModelCard(card).data.base_model is None
    repo = tmp_path / "downloaded"
    for name, data in upload["contents"].items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(data)
    shutil.copytree(work / "med-model", repo / "med-model")
    shutil.copytree(work / "safety-vec", repo / "safety-vec")
    result = cli("merge", "--recipe", repo / "graft_recipe.yaml", "--out", repo / "rebuilt", "-q")
    assert result.exit_code == 0, result.output
    for shard in merged.glob("*.safetensors"):
        assert (repo / "rebuilt" / shard.name).read_bytes() == shard.read_bytes()


def test_a_local_input_gone_at_push_time_is_named_without_hashes(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    target = tmp_path / "gone-model"
    shutil.copytree(world.target, target)
    merged = tmp_path / "merged"
    assert cli("merge", "-t", target, "--vector", world.vector, "-o", merged, "-q").exit_code == 0
    shutil.rmtree(target)
    assert cli("push", merged, "org/grafted").exit_code == 0
    card = _texts(FakeApi.calls[-1][1])["README.md"]
    assert "`gone-model` (not found where the recipe names it" in card and str(tmp_path) not in card


def test_a_pushed_vector_names_its_sources_by_folder_name(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    assert cli("push", world.vector, "org/vec").exit_code == 0
    upload = FakeApi.calls[-1][1]
    manifest = json.loads(upload["contents"]["vector.json"])
    assert (manifest["base"]["path"], manifest["aligned"]["path"]) == ("base", "aligned")
    assert manifest["base"]["sha256"] == json.loads((world.vector / "vector.json").read_text())["base"]["sha256"]
    assert not [name for name, text in _texts(upload).items() if str(world.base.parent) in text]


def test_merge_push_to_hub(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    out = tmp_path / "merged"
    result = cli("merge", "-t", world.target, "--vector", world.vector, "-o", out, "--push-to-hub", "org/m", "-q")
    assert result.exit_code == 0, result.output
    assert [name for name, _ in FakeApi.calls] == ["create_repo", "create_commit"]
    assert FakeApi.calls[0][1]["private"] is True
    assert FakeApi.calls[1][1]["contents"]["model.safetensors"] == (out / "model.safetensors").read_bytes()


def test_extract_push_to_hub(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    out = tmp_path / "vec"
    result = cli("extract", "-b", world.base, "-a", world.aligned, "-o", out, "--push-to-hub", "org/v", "-q")
    assert result.exit_code == 0, result.output
    assert "vector.json" in FakeApi.calls[-1][1]["uploaded"]
    assert FakeApi.calls[-1][1]["contents"]["vector.safetensors"] == (out / "vector.safetensors").read_bytes()


# -- refusals: one line, graft's exit code, and not one request made -------------------------------------------------
def test_no_token(merged: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_world) -> None:
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    one_line_error(cli("push", merged, "org/m"), 2, "no Hugging Face token", "hf auth login", "HF_TOKEN")
    world = make_world("causal")
    out = tmp_path / "never"
    result = cli("merge", "-t", world.target, "--vector", world.vector, "-o", out, "--push-to-hub", "org/m")
    one_line_error(result, 2, "no Hugging Face token")
    assert not out.exists()  # refused before the merge, not after
    assert FakeApi.calls == []


def test_not_a_graft_output(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    one_line_error(cli("push", world.target, "org/m"), 3, str(world.target), "not a graft output", MARKER)
    one_line_error(cli("push", tmp_path / "missing", "org/m"), 3, "no such folder")
    assert FakeApi.calls == []


def test_other_graft_outputs_are_not_pushed(merged: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    shutil.copytree(merged, report)
    (report / MARKER).write_text(json.dumps({"format": "graft-output", "kind": "inspect"}) + "\n")
    one_line_error(cli("push", report, "org/m"), 3, "a graft inspect output", "only merged models and vectors")
    assert FakeApi.calls == []


def test_incomplete_merged_folder(merged: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(merged, broken)
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    shard.unlink()
    one_line_error(cli("push", broken, "org/m"), 3, shard.name)
    card = tmp_path / "nocard"
    shutil.copytree(merged, card)
    (card / "README.md").unlink()
    one_line_error(cli("push", card, "org/m"), 3, "README.md", "missing")
    assert FakeApi.calls == []


def test_staging_leftovers(merged: Path, tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(merged, unfinished)
    (unfinished / OWNER).write_text("")
    one_line_error(cli("push", unfinished, "org/m"), 3, OWNER, "unfinished")
    staging = tmp_path / ".merged.graft-partial-4242"
    shutil.copytree(merged, staging)
    one_line_error(cli("push", staging, "org/m"), 3, "staging folder")
    assert FakeApi.calls == []


def test_broken_vector_folder(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    broken = tmp_path / "vec"
    shutil.copytree(world.vector, broken)
    (broken / "vector.json").write_text("{")
    one_line_error(cli("push", broken, "org/v"), 3, "vector.json")
    assert FakeApi.calls == []


def test_bad_repo_id(merged: Path) -> None:
    one_line_error(cli("push", merged, "not a repo"), 2, "org/name")
    one_line_error(cli("push", merged, "org/m", "--branch", "bad branch"), 2, "--revision")
    assert FakeApi.calls == []
    FakeApi.fail = {"create_repo": HFValidationError("Cannot have -- or .. in repo_id: 'org/a--b'.")}
    one_line_error(cli("push", merged, "org/a--b"), 2, "not a valid hub repository id")


@pytest.mark.parametrize(
    ("method", "error", "words"),
    [
        ("create_repo", RepositoryNotFoundError("404 Not Found", response=_fake_response(404)),
         ["org/m", "no such hub repository"]),
        ("create_repo", HfHubHTTPError("401 Unauthorized", response=_fake_response(401)), ["refused this token"]),
        ("create_commit", HfHubHTTPError("403 Forbidden", response=_fake_response(403)), ["write access"]),
        ("create_commit", HfHubHTTPError("500 Internal Server Error", response=_fake_response(500)),
         ["refused the push", "500"]),
        ("create_commit", OSError(101, "Network is unreachable"), ["could not reach the hub"]),
    ],
    ids=["404", "401", "403", "500", "offline"],
)
def test_hub_failures_are_one_line(merged: Path, method: str, error: Exception, words: list[str]) -> None:
    FakeApi.fail = {method: error}
    one_line_error(cli("push", merged, "org/m"), 3, *words)


def _client_error(name: str, message: str) -> Exception:
    """An error of the HTTP client huggingface_hub uses here (httpx2 in its newer releases, httpx before): not an
    OSError, which is how a push to an unreachable hub used to end as an "internal error"."""
    client = pytest.importorskip("httpx2") if _has("httpx2") else pytest.importorskip("httpx")
    error = getattr(client, name)(message)
    assert not isinstance(error, OSError)
    return error


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("method", ["create_repo", "create_commit"])
@pytest.mark.parametrize(("name", "message"), [("ConnectError", "[Errno -2] Name or service not known"),
                                               ("ReadTimeout", "The read operation timed out")])
def test_unreachable_hub_is_an_input_error(merged: Path, make_world, tmp_path: Path, method: str, name: str,
                                           message: str) -> None:
    FakeApi.fail = {method: _client_error(name, message)}
    one_line_error(cli("push", merged, "someorg/somerepo"), 3, "someorg/somerepo", "could not reach the hub",
                   name, message)
    world = make_world("causal")
    one_line_error(cli("push", world.vector, "someorg/vec"), 3, "could not reach the hub", name)
    out = tmp_path / "merged-then-push"
    result = cli("merge", "-t", world.target, "--vector", world.vector, "-o", out, "--push-to-hub", "org/m", "-q")
    one_line_error(result, 3, "could not reach the hub", name)
    assert (out / "config.json").is_file()  # the merge itself is complete and kept; only the push failed
    result = cli("extract", "-b", world.base, "-a", world.aligned, "-o", tmp_path / "v", "--push-to-hub", "org/v", "-q")
    one_line_error(result, 3, "could not reach the hub", name)


@pytest.mark.parametrize("repo", ["bad repo", "org/", "a/b/c", "-org/x"])
def test_push_to_hub_id_is_checked_before_any_work(make_world, tmp_path: Path, repo: str) -> None:
    world = make_world("causal")
    merged_out, vector_out = tmp_path / "never-merged", tmp_path / "never-extracted"
    result = cli("merge", "-t", world.target, "--vector", world.vector, "-o", merged_out, "--push-to-hub", repo)
    one_line_error(result, 2, "--push-to-hub", repo, "org/name")
    result = cli("extract", "-b", world.base, "-a", world.aligned, "-o", vector_out, "--push-to-hub", repo)
    one_line_error(result, 2, "--push-to-hub", repo, "org/name")
    assert not merged_out.exists() and not vector_out.exists()
    assert not list(tmp_path.glob(".*graft-partial*"))
    assert FakeApi.calls == []
