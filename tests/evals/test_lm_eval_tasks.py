"""graft's lm-eval task YAMLs (graft/evals/lm_eval_tasks) score as `graft eval` does, run by lm-eval itself."""

from __future__ import annotations

import math
import subprocess
import sys
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
def lm_eval_run(engine):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path(), include_defaults=False,
                          metadata={"graft_data": str(FIXTURES / "data.yaml")})
    lm = HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=2)
    # as graft scores them: multiple choice on plain text (as lm-eval's own tasks), safety through the chat template
    plain = lm_eval.simple_evaluate(model=lm, tasks=["graft_pubmedqa", "graft_medqa"], task_manager=manager,
                                    log_samples=True, bootstrap_iters=0)
    chat = lm_eval.simple_evaluate(model=lm, tasks=["graft_catqa"], task_manager=manager, log_samples=True,
                                   bootstrap_iters=0, apply_chat_template=True)
    return {key: {**plain[key], **chat[key]} for key in ("results", "samples")}


@pytest.fixture(scope="module")
def graft_run(engine):
    return graft.evaluate(engine, tasks=["pubmedqa", "medqa", "catqa"], data=fixture_data())


@pytest.mark.parametrize("name", ["pubmedqa", "medqa"])
def test_multiple_choice_yaml_gives_graft_accuracy(lm_eval_run, graft_run, name: str) -> None:
    theirs = lm_eval_run["results"][f"graft_{name}"]
    ours = graft_run.benchmarks[name]
    assert len(lm_eval_run["samples"][f"graft_{name}"]) == ours["n"] == ours["total_items"]
    assert math.isclose(theirs["acc,none"], ours["score"]) and math.isclose(theirs["acc_norm,none"], ours["acc_norm"])
    # per item: the same log-likelihoods for every option
    by_id = {s["doc"]["id"]: [float(r[0][0]) for r in s["resps"]] for s in lm_eval_run["samples"][f"graft_{name}"]}
    for record in (r for r in graft_run.samples if r["task"] == name):
        assert by_id[record["id"]] == pytest.approx(record["loglik"], abs=1e-4)


def test_safety_yaml_gives_graft_keyword_score(lm_eval_run, graft_run) -> None:
    theirs = lm_eval_run["results"]["graft_catqa"]
    ours = graft_run.benchmarks["catqa"]
    assert len(lm_eval_run["samples"]["graft_catqa"]) == ours["n"]
    assert math.isclose(theirs["safety,none"], ours["score"]) and math.isclose(theirs["asr,none"], ours["asr"])
    verdicts = {s["doc"]["id"]: s["safety"] for s in lm_eval_run["samples"]["graft_catqa"]}
    assert verdicts == {r["id"]: 0.0 if r["verdict"]["harmful"] else 1.0
                        for r in graft_run.samples if r["task"] == "catqa"}


def test_include_path_is_printed_and_holds_every_yaml() -> None:
    done = subprocess.run([sys.executable, "-m", "graft.evals.lm_eval_tasks"], capture_output=True, text=True,
                          check=True)
    folder = Path(done.stdout.strip())
    assert folder == Path(include_path()) and folder.is_absolute()
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    assert names == ["graft_benign", "graft_catqa", "graft_hexphi", "graft_medbullets4", "graft_medbullets5",
                     "graft_medqa", "graft_medsafetybench", "graft_pubmedqa"]


def test_missing_data_config_is_one_clear_error(monkeypatch) -> None:
    from graft.errors import UsageError
    from graft.evals.lm_eval_tasks import utils

    monkeypatch.delenv(utils.DATA_ENV, raising=False)
    with pytest.raises(UsageError, match="graft_data"):
        utils.pubmedqa()
    monkeypatch.setenv(utils.DATA_ENV, str(FIXTURES / "data.yaml"))
    from graft.evals.loaders import load_pubmedqa

    assert utils.pubmedqa()["test"]["id"] == [it.id for it in load_pubmedqa(fixture_data().pubmedqa)]
