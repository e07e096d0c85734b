"""Benchmark kinds as classes (graft.evals.kinds): a new kind is one class, registered, run through `evaluate` like
graft's own; the registry refuses what a kind does not offer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import pytest

from graft.errors import UsageError
from graft.evals import evaluate
from graft.evals.benchmarks import BENCHMARKS, SUITES, TASKS, Benchmark, register_benchmark, unregister_benchmark
from graft.evals.config import FIXTURES, DataConfig
from graft.evals.generation import Request
from graft.evals.kinds import KINDS, RunContext, TaskKind, register_kind
from graft.evals.loaders import Item, load_pubmedqa


class ExactAnswer(TaskKind):
    """Test-local kind: the question asked as is, the reply's first word compared with the item's answer."""

    name = "exact"
    noun = "exact-answer"
    suite = "medical"
    lm_eval_metrics: ClassVar = (("exact_match", "correct", True),)

    def default_max_new_tokens(self, model_judge: bool) -> int:
        return 5

    def run(self, task, items: list[Item], ctx: RunContext):
        gens = ctx.engine.generate([Request(it.prompt) for it in items], max_new_tokens=ctx.cap,
                                   batch_size=ctx.batch_size)
        records = [{"id": it.id, "category": it.category, "response": g.text, "answer": it.answer,
                    "correct": g.text.strip().split(" ")[0].lower() == it.answer}
                   for it, g in zip(items, gens, strict=True)]
        return records, sum(g.n_tokens for g in gens)

    def outcome(self, record: dict) -> float:
        return float(record["correct"])

    def summarize(self, records: Sequence[dict], mc_mode: str) -> dict:
        n = len(records)
        return {"score": sum(r["correct"] for r in records) / n, "n": n, "metric": "exact match"}

    def prompt(self, task, mc_mode: str) -> str:
        return "{question} — the first word of the reply"


@pytest.fixture
def exact_kind():
    """The test-local kind and its benchmark, gone afterwards."""
    benchmarks = dict(BENCHMARKS)
    register_kind(ExactAnswer())
    yield
    for name in [n for n in BENCHMARKS if n not in benchmarks]:
        unregister_benchmark(name)
    del KINDS["exact"]  # kinds are not removed by graft (their benchmarks' tasks hold them); a test may


def test_a_new_kind_is_one_class_run_through_evaluate(exact_kind, tiny_llama, tmp_path):
    register_benchmark(Benchmark("pubmedqa_exact", "exact", load_pubmedqa))
    assert TASKS["pubmedqa_exact"].kind == "exact" and SUITES["medical"][-1] == "pubmedqa_exact"
    data = DataConfig.from_mapping({"pubmedqa_exact": str(FIXTURES / "pubmedqa" / "ori_pqal.json"),
                                    "medqa": str(FIXTURES / "medqa" / "phrases_no_exclude_test.jsonl")})
    out = tmp_path / "results.json"
    results = evaluate(tiny_llama, tasks="medqa,pubmedqa_exact", data=data, limit=4, device="cpu", out=out,
                       lm_eval_out=tmp_path / "lm_eval.json")
    samples = [s for s in results.samples if s["task"] == "pubmedqa_exact"]
    assert len(samples) == 4
    # the score is the kind's, recomputed here from the replies it recorded
    expected = sum(s["response"].strip().split(" ")[0].lower() == s["answer"] for s in samples) / 4
    bench = results.benchmarks["pubmedqa_exact"]
    assert bench["score"] == expected and bench["metric"] == "exact match" and bench["n"] == 4
    # it enters the medical mean beside MedQA, with its own default cap, and lm-eval's export names its metric
    assert results.summary["medical"] == pytest.approx((results.benchmarks["medqa"]["score"] + expected) / 2)
    assert results.summary["safety"] is None and results.summary_se["medical"] is not None
    assert results.config["max_new_tokens"]["exact"] == 5
    assert results.config["task_configs"]["pubmedqa_exact"]["max_new_tokens"] == 5
    assert 0 < results.timing["pubmedqa_exact"]["generated_tokens"] <= 4 * 5
    lm = results.as_lm_eval()
    assert lm["results"]["graft_pubmedqa_exact"]["exact_match,none"] == expected
    assert lm["configs"]["graft_pubmedqa_exact"]["output_type"] == "generate_until"
    assert out.is_file()


def test_a_kind_offers_only_what_it_declares(exact_kind):
    with pytest.raises(UsageError, match="FigStep variants are for safety and benign requests, not kind exact"):
        Benchmark("x", "exact", load_pubmedqa, figstep=True)
    with pytest.raises(UsageError, match=r"a multiple-choice benchmark \(kind mc\) needs `choices`"):
        Benchmark("x", "exact", load_pubmedqa, choices=BENCHMARKS["medqa"].choices)
    with pytest.raises(UsageError, match="kind 'exact' is already registered"):
        register_kind(ExactAnswer())
    with pytest.raises(UsageError, match="kind 'nope' is not one of safety, benign, mc, vqa, exact"):
        Benchmark("x", "nope", load_pubmedqa)
    with pytest.raises(UsageError, match="kind 'other': suite 'misc' is not one of safety, medical"):
        register_kind(type("Other", (ExactAnswer,), {"name": "other", "suite": "misc"})())


def test_graft_kinds_in_order():
    assert list(KINDS) == ["safety", "benign", "mc", "vqa"]
    assert [KINDS[k].suite for k in KINDS] == ["safety", "safety", "medical", "medical"]
