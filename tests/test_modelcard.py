"""The model card of a merged folder, as the Hub reads it: parsed back with huggingface_hub's ModelCard."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from graft.cli import app
from graft.engines.merge import RECIPE_FILE
from graft.io.checkpoint import weights_sha256
from tests.test_hub import REPO, _cache_repo, offline  # noqa: F401  (offline: autouse, no network here)

runner = CliRunner()


def results_file(path: Path, weights: str) -> Path:
    """A results.json in the layout `graft eval --out` writes (only the fields the card reads matter), scoring the
    weights whose content hash is `weights`."""
    path.write_text(json.dumps({"benchmarks": {
        "catqa": {"score": 0.75, "n": 8, "metric": "1 - ASR", "asr": 0.25},
        "pubmedqa": {"score": 0.5, "n": 6, "metric": "accuracy (loglik)", "acc_norm": 0.5}}, "summary": {},
        "model": {"weights_sha256": weights}}))
    return path


def merge(*args: object) -> None:
    result = runner.invoke(app, ["merge", *map(str, args), "-q"])
    assert result.exit_code == 0, result.output


def test_card_of_a_local_target(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    out = tmp_path / "merged"
    merge("-t", world.target, "--vector", world.vector, "-o", out, "--scale", "0.5")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and "base_model_relation" not in card.data.to_dict()  # never a path
    assert {"graft", "safety", "merge"} <= set(card.data.tags)
    assert card.data.eval_results is None
    manifest = json.loads((world.vector / "vector.json").read_text())
    stored = {t["dtype"] for t in manifest["tensors"].values()}
    assert manifest["dtype"] == "auto" and "stored as auto" not in card.text
    assert f"stored as {', '.join(sorted(stored))}, each tensor in its source dtype" in card.text
    for role in ("base", "aligned"):  # provenance: every source file's hash as vector.json records it
        assert manifest[role]["sha256"]
        for file, digest in manifest[role]["sha256"].items():
            assert f"`{file}` sha256 `{digest}`" in card.text
    recipe = card.text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(recipe) == yaml.safe_load((out / RECIPE_FILE).read_text())


def test_results_become_model_index_and_the_card_is_reproducible(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    merge("-t", world.target, "--vector", world.vector, "-o", tmp_path / "evaluated")  # what `graft eval` scored
    scores = results_file(tmp_path / "results.json", weights_sha256(tmp_path / "evaluated"))
    for out in ("a", "b"):
        merge("-t", world.target, "--vector", world.vector, "-o", tmp_path / out, "--results", scores)
    text = (tmp_path / "a" / "README.md").read_text()
    assert text == (tmp_path / "b" / "README.md").read_text() and str(tmp_path) not in text.split("## Recipe")[0]
    card = ModelCard(text)
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert got == {("catqa", "1 - ASR"): 0.75, ("pubmedqa", "accuracy (loglik)"): 0.5}
    assert card.data.model_name.endswith(f"+ safety vector (graft {__import__('graft').__version__})")
    assert "| catqa | 0.7500 | 1 - ASR | 8 |" in text
    # the weights do not depend on the card's scores
    for file in (tmp_path / "a").glob("*.safetensors"):
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes()


def test_hub_target_is_the_base_model(make_world, offline: Path, tmp_path: Path) -> None:  # noqa: F811
    world = make_world("causal")
    _cache_repo(offline, REPO, world.target)
    merge("-t", REPO, "--vector", world.vector, "-o", tmp_path / "merged")
    card = ModelCard.load(tmp_path / "merged" / "README.md")
    assert card.data.base_model == REPO and card.data.to_dict()["base_model_relation"] == "merge"


def test_bad_results_file_is_refused_before_any_output(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    bad = tmp_path / "bad.json"
    for content, message in (("{", "not JSON"), ('{"benchmarks": {"x": {"score": "high"}}}', "benchmarks.x"),
                             ("[]", "no 'benchmarks'")):
        bad.write_text(content)
        result = runner.invoke(app, ["merge", "-t", str(world.target), "--vector", str(world.vector),
                                     "-o", str(tmp_path / "out"), "--results", str(bad)])
        assert result.exit_code == 3 and message in result.output and str(bad) in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    result = runner.invoke(app, ["merge", "-t", str(world.target), "--vector", str(world.vector),
                                 "-o", str(tmp_path / "out"), "--results", str(tmp_path / "none.json")])
    assert result.exit_code == 3 and "--results: " in result.output and "cannot read" in result.output
