"""`graft eval MERGED --update-card`: the scores go into a merged folder's model card in place, under graft's ownership
rules, checked against the folder's weights; the card read back as the Hub reads it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from typer.testing import CliRunner

from graft.cli import app
from graft.errors import IncompatibleError, OutputError
from graft.evals.config import FIXTURES
from graft.io.ownership import MARKER, foreign_content

runner = CliRunner()


def eval_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", str(model), "--tasks", "catqa,medqa", "--data", str(FIXTURES / "data.yaml"), "--limit", "2",
            "--max-new-tokens", "2", "--device", "cpu", "--out", str(out), "-q", *extra]


@pytest.fixture(scope="module")
def merged(make_world, tmp_path_factory) -> Path:
    world = make_world("causal")
    out = tmp_path_factory.mktemp("card") / "merged"
    result = runner.invoke(app, ["merge", "-t", str(world.target), "--vector", str(world.vector), "-o", str(out),
                                 "-q"])
    assert result.exit_code == 0, result.output
    return out


def copy_of(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    return copy


def hashes(folder: Path, *leave_out: str) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in leave_out}


def no_evaluation(*args, **kwargs):
    raise AssertionError("the model was evaluated although the card could not be updated")


def test_scores_go_into_the_card_in_place(merged: Path, make_world, tmp_path: Path) -> None:
    folder = copy_of(merged, tmp_path)
    others = hashes(folder, "README.md", MARKER)
    results = tmp_path / "results.json"
    result = runner.invoke(app, eval_args(folder, results, "--update-card"))
    assert result.exit_code == 0, result.output
    assert str(folder / "README.md") in result.stderr  # said among the files written
    scored = json.loads(results.read_text())["benchmarks"]
    card = ModelCard.load(folder / "README.md")
    got = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert got == {(task, b["metric"]): b["score"] for task, b in scored.items()} and len(got) == 2
    assert metadata_load(folder / "README.md")["model-index"][0]["results"]
    for task, b in scored.items():
        assert f"| {task} | {b['score']:.4f} | {b['metric']} | {b['n']} |" in card.text
    assert hashes(folder, "README.md", MARKER) == others  # nothing else in the folder changed
    assert foreign_content(folder) is None  # the new card is recorded as graft's: a later --force may replace it
    # the same card `graft merge --results` writes with these results
    world = make_world("causal")
    again = tmp_path / "again"
    result = runner.invoke(app, ["merge", "-t", str(world.target), "--vector", str(world.vector), "-o", str(again),
                                 "--results", str(results), "-q"])
    assert result.exit_code == 0, result.output
    assert (again / "README.md").read_text() == (folder / "README.md").read_text()
    # a second evaluation replaces the scores rather than adding a second Evaluation section
    result = runner.invoke(app, eval_args(folder, tmp_path / "r2.json", "--update-card", "--seed", "1"))
    assert result.exit_code == 0, result.output
    text = (folder / "README.md").read_text()
    assert text.count("## Evaluation") == 1 and text.count("model-index") == 1


def test_a_card_the_user_edited_keeps_the_edits(merged: Path, tmp_path: Path) -> None:
    folder = copy_of(merged, tmp_path)
    card = folder / "README.md"
    text = card.read_text().replace("tags:\n", "license: mit\ntags:\n", 1)
    card.write_text(text + "\n## Notes\n\nTried on the ward's test questions.\n")
    result = runner.invoke(app, eval_args(folder, tmp_path / "results.json", "--update-card"))
    assert result.exit_code == 0, result.output
    assert "had edits of yours" in " ".join(result.stderr.split())
    updated = ModelCard.load(card)
    assert updated.data.license == "mit" and len(updated.data.eval_results) == 2
    assert updated.text.index("## Evaluation") < updated.text.index("## Recipe") < updated.text.index("## Notes")
    assert "Tried on the ward's test questions." in updated.text
    # still not recorded as graft's: --force will not delete the user's edits
    assert foreign_content(folder) is not None and "README.md" in foreign_content(folder)


def test_refused_before_the_evaluation(merged: Path, make_world, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("graft.evals.suite.evaluate", no_evaluation)
    world = make_world("causal")
    plain = tmp_path / "plain"
    shutil.copytree(world.target, plain)
    (plain / "README.md").write_text("# mine\n")
    unfinished = copy_of(merged, tmp_path / "u")
    (unfinished / MARKER).write_text(json.dumps({"format": "graft-output", "kind": "merge"}))
    no_card = copy_of(merged, tmp_path / "n")
    (no_card / "README.md").unlink()
    cases = [(plain, "not a graft output"), (world.vector, "not a merged model"), (unfinished, "unfinished"),
             (no_card, "missing"), (Path("org/model"), "not a local folder")]
    for model, words in cases:
        before = hashes(model) if model.exists() else None
        result = runner.invoke(app, eval_args(model, tmp_path / "r.json", "--update-card"))
        assert result.exit_code == OutputError.exit_code, result.output
        line = " ".join(result.stderr.split())
        assert line.startswith("error: --update-card") and words in line and str(model) in line, line
        assert not (tmp_path / "r.json").exists()
        assert before is None or hashes(model) == before


def test_scores_of_other_weights_are_refused(merged: Path, tmp_path: Path, monkeypatch) -> None:
    """Weights that changed while the evaluation ran: the card is left as it was, the results are kept."""
    folder = copy_of(merged, tmp_path)
    before = hashes(folder)
    monkeypatch.setattr("graft.engines.card_scores.weights_sha256", lambda folder: "0" * 64)
    result = runner.invoke(app, eval_args(folder, tmp_path / "results.json", "--update-card"))
    assert result.exit_code == IncompatibleError.exit_code, result.output
    line = " ".join(result.stderr.split())
    assert "--update-card" in line and "0" * 64 in line and "left as it was" in line, line
    assert hashes(folder) == before and (tmp_path / "results.json").is_file()
