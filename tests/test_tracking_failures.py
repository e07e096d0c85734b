"""Trackers that cannot be reached: a wrong MLflow server or a W&B run that cannot start fails in seconds, before any
trial, as one line (exit 3) saying where it pointed and what to do; a tracker that fails once the work is done costs
a warning, never the search's outputs or its exit code. No network: the server is a closed local port."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from test_search import LambdaScorer, eval_file, load_study, num_layers, space_file
from typer.testing import CliRunner

from graft.cli import app
from graft.errors import InputError
from graft.io.tracking import MLFLOW_OPEN_LIMITS, env_defaults, open_trackers
from graft.search import run_search

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
SMALL = ("graft_space: 1\nsampler: cmaes\ndepth: {kind: control_points, count: 2, low: 0.0, high: 1.5}\n"
         "groups: {attn: 1.0, mlp: 1.0, norm: 0.0, embed: 0.0, head: 0.0}\n"
         "baselines: {uniform: [0.5, 1.0]}\n")


def one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if "Warning" not in line]  # Python's own warnings
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.fixture
def unreachable_mlflow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    import mlflow

    for key in MLFLOW_OPEN_LIMITS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", UNREACHABLE)
    mlflow.set_tracking_uri(UNREACHABLE)  # an earlier MLflow user in this process may have set another one
    monkeypatch.chdir(tmp_path)
    yield UNREACHABLE
    mlflow.set_tracking_uri(None)


def test_unreachable_mlflow_fails_the_search_before_any_trial(make_world, tmp_path: Path,
                                                              unreachable_mlflow: str) -> None:
    world = make_world("causal")
    out = tmp_path / "out"
    args = ["search", "--space", space_file(tmp_path, SMALL), "--eval", eval_file(tmp_path), "--trials", "4",
            "--target", world.target, "--vector", world.vector, "--out", out, "--log", "mlflow"]
    started = time.monotonic()
    result = CliRunner().invoke(app, [str(a) for a in args])
    seconds = time.monotonic() - started
    assert result.exit_code == 3, result.output
    line = one_line(result.output)
    for words in ("error: --log mlflow: could not start a run", f"MLFLOW_TRACKING_URI={UNREACHABLE}",
                  "check MLFLOW_TRACKING_URI"):
        assert words in line, line
    assert seconds < 60, seconds  # MLflow's own retries alone would take minutes
    assert not (out / "graft.db").exists()  # refused before the study was opened, let alone a trial run
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") is None  # the open's limits do not outlive it


def test_the_users_own_mlflow_limits_are_kept() -> None:
    key = "MLFLOW_HTTP_REQUEST_TIMEOUT"
    os.environ[key] = "77"
    try:
        with env_defaults(MLFLOW_OPEN_LIMITS):
            assert os.environ[key] == "77"
            retries = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
            assert os.environ[retries] == MLFLOW_OPEN_LIMITS[retries]
        assert os.environ[key] == "77"
    finally:
        del os.environ[key]


@pytest.mark.parametrize(("error", "words"), [
    ("UsageError", "No API key configured. Use `wandb login` to log in."),
    ("AuthenticationError", "API key is invalid"),
    ("CommError", "Run initialization has timed out after 30.0 sec.\nPlease refer to the documentation"),
])
def test_a_wandb_run_that_cannot_start_is_one_line(monkeypatch: pytest.MonkeyPatch, error: str, words: str) -> None:
    wandb = pytest.importorskip("wandb")
    seen: dict = {}

    def init(**kwargs: object) -> None:
        seen.update(kwargs)
        raise getattr(wandb.errors, error)(words)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    with pytest.raises(InputError) as info:
        open_trackers(["wandb"], "graft search s", {"budget": 4})
    message = str(info.value)
    assert "\n" not in message
    first = words.splitlines()[0]
    assert message.startswith(f"--log wandb: could not start a run (WANDB_MODE=online): {error}: {first}")
    assert "wandb login" in message and "WANDB_MODE=offline" in message
    assert seen["settings"].init_timeout == 30.0  # bounded: W&B's own default waits 90 s


def test_a_tracker_failing_after_the_search_is_a_warning_and_the_outputs_stay(
        make_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    from graft.io.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.chdir(tmp_path)
    lost = MlflowException("API request to http://tracker/api/2.0/mlflow/runs/log-batch failed with exception "
                           "HTTPConnectionPool: Max retries exceeded\n(long details)")

    def down(*args: object, **kwargs: object) -> None:
        raise lost

    monkeypatch.setattr(MlflowTracker, "trial", down)
    monkeypatch.setattr(MlflowTracker, "finish", down)
    world = make_world("causal")
    with caplog.at_level(logging.WARNING, logger="graft"):
        result = run_search(space=space_file(tmp_path, SMALL), eval_config=eval_file(tmp_path), target=str(
            world.target), vector=str(world.vector), out=tmp_path / "out", scorer=LambdaScorer(num_layers(world)),
            trials=2, log=["mlflow"])
    assert len(load_study(tmp_path / "out").trials) == 5  # every trial ran although each log failed
    for name in ("best_recipe.yaml", "summary.json", "trials.csv"):
        assert (result.out / name).is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one for the trials (then mlflow sits out), one for the end
    assert "logging trial 0 failed (MlflowException: API request" in warnings[0]
    assert "outputs are complete" in warnings[1] and str(result.out / "summary.json") in warnings[1]
    assert all("\n" not in w for w in warnings)
