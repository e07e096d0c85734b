# ruff: noqa: F811  (fixtures imported from other test modules are parameters here)
"""Long jobs keep their work: an evaluation that fails keeps its finished tasks and a rerun scores only what is
missing (never a stale partial); an inspection of a flat study still writes its report; the recipe a merged folder
carries rebuilds it, byte for byte, with the very command its model card prints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest

import graft.evals.suite
from graft.core.recipe import Coefficients
from graft.engines.merge import RECIPE_FILE
from graft.engines.model_card import REPRODUCE
from graft.errors import InputError
from graft.evals.config import FIXTURES
from graft.io.guard import MARKER
from tests.evals.conftest import tiny_llama  # noqa: F401
from tests.hostile.io_checks import (  # noqa: F401  (fixtures are found by name)
    Models,
    assert_error,
    built,
    cli,
    file_hashes,
    graft_process,
    leftovers,
    m,
    merge_args,
    outdir,
)

DATA = FIXTURES / "data.yaml"
TASKS = ["catqa", "hexphi", "benign", "pubmedqa", "medqa"]


def _eval_args(model: Path, out: Path, *extra: object) -> list[object]:
    return ["eval", model, "--tasks", ",".join(TASKS), "--data", DATA, "--out", out, "--limit", "3",
            "--max-new-tokens", "3", "--device", "cpu", *extra]


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tasks that actually score items (not served from the kept results)."""
    calls: list[str] = []
    real = graft.evals.suite._run_task

    def spy(task, items, *args, **kwargs):
        if items:
            calls.append(task.name)
        return real(task, items, *args, **kwargs)

    monkeypatch.setattr(graft.evals.suite, "_run_task", spy)
    return calls


def _fail_at(monkeypatch: pytest.MonkeyPatch, name: str, error: Exception) -> None:
    real = graft.evals.suite._run_task

    def failing(task, items, *args, **kwargs):
        if task.name == name:
            raise error
        return real(task, items, *args, **kwargs)

    monkeypatch.setattr(graft.evals.suite, "_run_task", failing)


# -- 16. an evaluation that fails keeps its finished tasks ---------------------------------------------------------
def test_a_failed_eval_keeps_finished_tasks_and_a_rerun_scores_only_the_rest(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "reference.json"
    assert cli(*_eval_args(tiny_llama, reference)).exit_code == 0
    out = tmp_path / "results.json"
    with monkeypatch.context() as patch:
        _fail_at(patch, "pubmedqa", InputError("pubmedqa.json: item 7 has no answer"))
        result = cli(*_eval_args(tiny_llama, out))
        # eval reports progress on stderr; the failure is its last line, one line, no traceback
        assert result.exit_code == 3 and "Traceback" not in result.stderr, result.stderr
        line = result.stderr.rstrip("\n").split("\n")[-1]
        assert line.startswith("error: task pubmedqa: pubmedqa.json: item 7 has no answer"), line
        assert "catqa, hexphi, benign" in line and "rerun the same command" in line
    assert "results.partial.sqlite" in line
    assert not out.exists() and (tmp_path / "results.partial.sqlite").is_file()
    # A bug (not an input error) keeps them too, and says so.
    with monkeypatch.context() as patch:
        _fail_at(patch, "medqa", RuntimeError("CUDA out of memory"))
        result = cli(*_eval_args(tiny_llama, out))
        assert result.exit_code == 1 and "task medqa failed" in result.stderr and "kept" in result.stderr
    ran: list[str] = []
    real = graft.evals.suite._run_task
    monkeypatch.setattr(graft.evals.suite, "_run_task",
                        lambda task, items, *a, **k: (ran.append(task.name) if items else None) or real(task, items,
                                                                                                       *a, **k))
    assert cli(*_eval_args(tiny_llama, out)).exit_code == 0
    assert ran == ["medqa"]  # pubmedqa finished in the second run; the first three in the first
    mine, theirs = json.loads(out.read_text()), json.loads(reference.read_text())
    assert {t: b["score"] for t, b in mine["benchmarks"].items()} == \
           {t: b["score"] for t, b in theirs["benchmarks"].items()}
    samples = [json.loads(x) for x in out.with_name("results.samples.jsonl").read_text().splitlines()]
    reference_samples = [json.loads(x) for x in reference.with_name("reference.samples.jsonl").read_text().splitlines()]
    assert samples == reference_samples
    assert not (tmp_path / "results.partial.sqlite").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("change", ["max-new-tokens", "weights", "judge-settings"])
def test_a_partial_from_other_settings_or_weights_is_never_reused(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ran: list[str], change: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    out = tmp_path / "results.json"
    with monkeypatch.context() as patch:
        _fail_at(patch, "medqa", InputError("medqa: boom"))
        assert cli(*_eval_args(model, out)).exit_code == 3
    ran.clear()
    extra: list[object] = []
    if change == "max-new-tokens":
        extra = ["--max-new-tokens", "4"]
    elif change == "judge-settings":
        extra = ["--full-replies"]
    else:
        from safetensors.torch import load_file, save_file

        weights = model / "model.safetensors"
        state = load_file(weights)
        name = next(n for n in state if n.endswith("lm_head.weight") or n.endswith("embed_tokens.weight"))
        state[name] = state[name] * 1.5
        save_file(state, str(weights), metadata={"format": "pt"})
    assert cli(*_eval_args(model, out, *extra)).exit_code == 0
    scored_again = {"catqa", "hexphi", "benign", "pubmedqa", "medqa"}
    if change == "judge-settings":  # --full-replies changes only generated tasks' settings, not log-likelihood ones
        scored_again = {"catqa", "hexphi", "benign", "medqa"}
    assert scored_again <= set(ran)


# -- 17. a study with flat scores ----------------------------------------------------------------------------------
def test_inspect_of_a_flat_study_writes_the_report_without_importances(m: Models, tmp_path: Path) -> None:
    database = tmp_path / "search.db"
    study = optuna.create_study(study_name="flat", storage=f"sqlite:///{database}", direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        scale = trial.suggest_float("scale", 0.0, 1.0)
        trial.set_user_attr("coefficients", Coefficients(scale=scale).model_dump(mode="json"))
        trial.set_user_attr("safety", 0.5)
        trial.set_user_attr("medical", 0.5)
        return 0.5  # every trial scores the same: importances are undefined

    study.optimize(objective, n_trials=6)
    out = tmp_path / "report"
    before = file_hashes(m.vector)
    result = cli("inspect", "--vector", m.vector, "--storage", database, "--study", "flat", "--no-safelora",
                 "--out", out, "-q")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warning) == 1 and "no parameter importances" in warning[0] and "Traceback" not in result.stderr
    assert (out / "layers.csv").is_file() and not (out / "importance.csv").exists()
    index = json.loads((out / "inspect.json").read_text())
    assert index["sources"]["importance"].startswith("not computed")
    assert file_hashes(m.vector) == before


# -- 19. the stored recipe rebuilds the output from anywhere -------------------------------------------------------
def test_the_model_cards_reproduce_line_rebuilds_the_output_byte_for_byte(m: Models, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(m.target, work / "models" / "target")
    shutil.copytree(m.vector, work / "vectors" / "safety")
    proc = graft_process("merge", "-t", "models/target", "--vector", "vectors/safety", "--out", "merged",
                         "--scale", "0.7", "--group", "mlp=0.5", "-q", cwd=work)
    assert proc.returncode == 0, proc.stderr
    merged = work / "merged"
    card = (merged / "README.md").read_text()
    command = next(line for line in card.splitlines() if line.startswith("Reproduce with `")).split("`")[1]
    assert command == REPRODUCE
    argv = command.split()
    assert argv[0] == "graft"
    rebuilt = graft_process(*argv[1:], cwd=merged)  # run exactly what the card prints, where it says
    assert rebuilt.returncode == 0, rebuilt.stderr
    # every file but graft's marker, whose record of the files holds their inodes and times
    original = {p.relative_to(merged): p.read_bytes() for p in merged.rglob("*")
                if p.is_file() and "rebuilt" not in p.relative_to(merged).parts and p.name != MARKER}
    again = {p.relative_to(merged / "rebuilt"): p.read_bytes() for p in (merged / "rebuilt").rglob("*")
             if p.is_file() and p.name != MARKER}
    assert again == original
    # The stored recipe names its inputs by absolute path, so it also works from any other folder.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = graft_process("merge", "--recipe", merged / RECIPE_FILE, "--out", "copy", "-q", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert {p.relative_to(elsewhere / "copy"): p.read_bytes() for p in (elsewhere / "copy").rglob("*")
            if p.is_file() and p.name != MARKER} == original
