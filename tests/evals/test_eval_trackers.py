"""`graft eval --log`: the tracker's run starts before the first item is scored, so an unreachable server fails in
seconds with nothing written; once the results are written, a tracker that fails is a warning and exit 0."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.evals.config import FIXTURES
from graft.tracking import MLFLOW_OPEN_LIMITS

UNREACHABLE = "http://127.0.0.1:9"


def _args(model: Path, out: Path) -> list[str]:
    return ["eval", str(model), "--tasks", "medqa", "--data", str(FIXTURES / "data.yaml"), "--limit", "2", "--out",
            str(out), "--device", "cpu", "--log", "mlflow"]


def test_unreachable_mlflow_fails_before_the_evaluation(tiny_llama: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    for key in MLFLOW_OPEN_LIMITS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", UNREACHABLE)
    mlflow.set_tracking_uri(UNREACHABLE)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ev.json"
    started = time.monotonic()
    result = CliRunner().invoke(app, _args(tiny_llama, out))
    seconds = time.monotonic() - started
    mlflow.set_tracking_uri(None)
    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.strip().splitlines() if "Warning" not in line]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith("error: --log mlflow: could not start a run (MLFLOW_TRACKING_URI=http://127.0.0.1:9)")
    assert "check MLFLOW_TRACKING_URI" in lines[0]
    assert seconds < 60, seconds
    assert not out.exists() and not (tmp_path / "ev.samples.jsonl").exists()  # refused before the evaluation ran


def test_a_tracker_failing_after_the_results_are_written_is_a_warning(tiny_llama: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from graft.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "graft-eval-down")
    mlflow.set_tracking_uri(uri)
    monkeypatch.chdir(tmp_path)

    def down(self: MlflowTracker, **kwargs: object) -> None:
        raise MlflowException("API request to http://tracker/api/2.0/mlflow/runs/log-batch failed\nmore lines")

    monkeypatch.setattr(MlflowTracker, "finish", down)
    out = tmp_path / "ev.json"
    result = CliRunner().invoke(app, [*_args(tiny_llama, out), "-q"])
    assert result.exit_code == 0, result.output
    assert "Loading weights" not in result.output  # -q: no library progress bars either
    warnings = [line for line in result.stderr.splitlines() if "--log mlflow" in line]
    assert len(warnings) == 1, result.stderr
    assert "outputs are complete" in warnings[0] and str(out) in warnings[0] and "MlflowException" in warnings[0]
    assert json.loads(out.read_text())["benchmarks"]["medqa"]["n"] == 2  # the results are kept, whole
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("graft-eval-down").experiment_id])
    assert run.data.tags["graft"] == "1"  # the run was started before the evaluation


def test_mlflow_is_never_handed_another_applications_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """MLflow creates and migrates its tables in whatever SQLite file MLFLOW_TRACKING_URI names: graft refuses one
    that holds another application's tables before MLflow opens it (exit 3), and the file stays as it was."""
    import hashlib
    import sqlite3

    import mlflow

    theirs = tmp_path / "their.db"
    db = sqlite3.connect(theirs)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    db.commit()
    db.close()
    before = hashlib.sha256(theirs.read_bytes()).hexdigest()
    uri = f"sqlite:///{theirs}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        result = CliRunner().invoke(app, _args(Path("model"), tmp_path / "ev.json"))
    finally:
        mlflow.set_tracking_uri(None)
    assert result.exit_code == 3, result.output
    (line,) = [line for line in result.stderr.strip().splitlines() if "Warning" not in line]
    assert line.startswith("error: --log mlflow: could not start a run") and "holds table 'invoices'" in line, line
    assert hashlib.sha256(theirs.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["their.db"]
