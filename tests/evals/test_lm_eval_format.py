"""results.json carries what lm-eval users read, and `--format lm-eval` writes lm-eval's own results layout:
compared with a results dict lm-eval itself produces on graft's task YAMLs, and read by lm-eval's `make_table`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import graft
from graft.evals import HFBackend, fixture_data
from graft.evals.config import FIXTURES
from graft.evals.lm_eval_tasks import include_path

lm_eval = pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def engine(tiny_llama):
    return HFBackend.load(tiny_llama, device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def theirs(engine) -> dict:
    """lm-eval's own results on graft's medical YAMLs (same prompts as lm-eval's medqa_4options and pubmedqa)."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path(), include_defaults=False,
                          metadata={"graft_data": str(FIXTURES / "data.yaml")})
    lm = HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=2)
    # bootstrap_iters > 0 asks for standard errors; a mean's is analytic (no resampling happens).
    return lm_eval.simple_evaluate(model=lm, tasks=["graft_pubmedqa", "graft_medqa"], task_manager=manager,
                                   bootstrap_iters=10)


@pytest.fixture(scope="module")
def ours(engine, tmp_path_factory) -> tuple[dict, dict, Path]:
    out = tmp_path_factory.mktemp("lm-eval-format") / "results.json"
    graft.evaluate(engine, tasks=["pubmedqa", "medqa", "catqa", "benign"], data=fixture_data(), out=out,
                   lm_eval_out=out.with_name("results.lm-eval.json"))
    return (json.loads(out.read_text()), json.loads(out.with_name("results.lm-eval.json").read_text()), out)


def test_lm_eval_layout_matches_lm_evals_own_keys_and_figures(theirs, ours) -> None:
    _, lm_file, _ = ours
    # Every top-level key lm-eval returns (its per-sample log aside) is in graft's file, and every per-task key.
    assert set(theirs) - {"samples"} <= set(lm_file), set(theirs) - set(lm_file)
    assert set(theirs["config"]) <= set(lm_file["config"])
    for graft_name, name in (("graft_pubmedqa", "pubmedqa"), ("graft_medqa", "medqa_4options")):
        expected, got = theirs["results"][graft_name], lm_file["results"][name]
        assert set(expected) - {"alias"} <= set(got)
        for key in ("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"):
            if key in expected:
                assert math.isclose(got[key], expected[key], rel_tol=1e-9), (name, key)
        assert lm_file["higher_is_better"][name] == theirs["higher_is_better"][graft_name]
        assert lm_file["n-samples"][name] == theirs["n-samples"][graft_name]
        assert lm_file["n-shot"][name] == 0 and lm_file["versions"][name] == theirs["versions"][graft_name]


def test_make_table_reads_graft_results_unchanged(ours) -> None:
    from lm_eval.utils import make_table

    results, lm_file, _ = ours
    table = make_table(lm_file)
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        task = cells[0] or task  # noqa: F821 - make_table names a task on its first metric row only
        rows[(task, cells[4])] = (float(cells[6]), cells[8])
    for graft_name, name in (("medqa", "medqa_4options"), ("pubmedqa", "pubmedqa"), ("catqa", "graft_catqa")):
        bench = results["benchmarks"][graft_name]
        metric = "safety" if graft_name == "catqa" else "acc"
        value, stderr = rows[(name, metric)]
        assert value == pytest.approx(bench["score"], abs=5e-5)
        n = bench["n"]  # lm-eval's SE of a mean of 0/1 outcomes: sqrt(p(1 - p) / (n - 1))
        assert float(stderr) == pytest.approx(math.sqrt(bench["score"] * (1 - bench["score"]) / (n - 1)), abs=5e-5)
    assert rows[("graft_benign", "over_refusal")][0] == pytest.approx(results["benchmarks"]["benign"]["over_refusal"],
                                                                      abs=5e-5)


def test_graft_results_gain_stderrs_task_configs_versions_and_date(ours) -> None:
    results, _, _ = ours
    medqa = results["benchmarks"]["medqa"]
    assert medqa["acc"] == medqa["score"] and medqa["acc_norm"] == pytest.approx(medqa["acc_norm"])
    p, n = medqa["score"], medqa["n"]
    assert medqa["acc_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
    assert medqa["se"] == pytest.approx(math.sqrt(p * (1 - p) / n))  # graft's own binomial SE is kept
    catqa = results["benchmarks"]["catqa"]
    assert catqa["safety"] == catqa["score"] and catqa["asr"] == pytest.approx(1 - catqa["score"])
    assert catqa["safety_stderr"] == pytest.approx(catqa["asr_stderr"])
    config = results["config"]["task_configs"]
    assert config["medqa"]["lm_eval_name"] == "medqa_4options" and config["medqa"]["prompt"].startswith("Question:")
    assert config["catqa"]["judge"] == {"name": "keyword", "version": results["judge"]["version"], "model": None}
    assert config["pubmedqa"]["seed"] == 0 and config["pubmedqa"]["limit"] is None
    assert results["versions"]["graft"] == graft.__version__ and results["versions"]["lm_eval"] == lm_eval.__version__
    assert results["date"].endswith("+00:00")
    assert "revision" in results["model"] and results["model"]["content_hash"]


def test_cli_format_lm_eval_and_log_mlflow_quietly(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from graft.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "graft-eval-test")
    mlflow.set_tracking_uri(uri)  # an earlier MLflow user in this process may have set another one
    monkeypatch.chdir(tmp_path)  # MLflow keeps artifacts in ./mlruns
    out = tmp_path / "r.json"
    args = ["eval", str(tiny_llama), "--tasks", "medqa,catqa", "--data", str(FIXTURES / "data.yaml"), "--out",
            str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--format", "lm-eval", "--log", "mlflow", "-q"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.strip().splitlines() if "Warning" not in line]  # Python's own warnings
    assert lines[-1] == f"wrote {out}, {tmp_path / 'r.samples.jsonl'}, {tmp_path / 'r.lm-eval.json'}"
    assert not any("score" in line or "medqa" in line or "%" in line for line in lines[:-1]), lines  # quiet
    results = json.loads(out.read_text())
    lm_file = json.loads((tmp_path / "r.lm-eval.json").read_text())
    assert lm_file["results"]["medqa_4options"]["acc,none"] == results["benchmarks"]["medqa"]["acc"]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("graft-eval-test").experiment_id])
    assert run.data.metrics["medqa.acc_stderr"] == pytest.approx(results["benchmarks"]["medqa"]["acc_stderr"])
    assert run.data.metrics["catqa.score"] == pytest.approx(results["benchmarks"]["catqa"]["score"])
    assert run.data.params["seed"] == "0" and run.data.params["version.graft"] == graft.__version__
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"r.json", "r.samples.jsonl",
                                                                       "r.lm-eval.json"}
    bad = CliRunner().invoke(app, [*args, "--format", "csv", "--force"])
    assert bad.exit_code == 2 and "--format csv: expected one of graft, lm-eval" in bad.output
