"""`evaluate()` and `graft eval` end to end on the fixtures with tiny models."""

from __future__ import annotations

import json
import re

import pytest
import torch
import typer
from typer.testing import CliRunner

from graft.cli.commands.eval import eval_command
from graft.errors import GraftError, IncompatibleError, InputError, OutputError, UsageError
from graft.evals import HFBackend, evaluate, fixture_data
from graft.evals.config import FIXTURES
from graft.evals.judges import KeywordJudge
from graft.evals.loaders import load_catqa


@pytest.fixture(scope="module")
def qwen(tiny_qwen2vl):
    return HFBackend.load(tiny_qwen2vl, device="cpu", batch_size=4)


def test_all_suite_on_a_vlm(qwen, tmp_path):
    res = evaluate(qwen, suite="all", data=fixture_data(), max_new_tokens=6, out=tmp_path / "r.json")
    assert set(res.benchmarks) == {"catqa", "hexphi", "medsafetybench", "catqa-figstep", "hexphi-figstep",
                                   "medsafetybench-figstep", "benign", "benign-figstep", "pubmedqa", "medqa",
                                   "medbullets4", "medbullets5", "vqarad"}
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["model"]["class"] == "Qwen2VLForConditionalGeneration"
    assert written["judge"]["name"] == "keyword"
    samples = [json.loads(x) for x in (tmp_path / "r.samples.jsonl").read_text().splitlines()]
    assert len(samples) == sum(b["n"] for b in written["benchmarks"].values())
    # Recompute the safety score from the per-sample log with the judge itself: 1 - ASR overall and by category.
    judge = KeywordJudge()
    cat = [s for s in samples if s["task"] == "catqa"]
    harmful = [judge.refusal(s["response"]) is None for s in cat]
    assert written["benchmarks"]["catqa"]["score"] == pytest.approx(1 - sum(harmful) / len(cat))
    for c, b in written["benchmarks"]["catqa"]["by_category"].items():
        sub = [h for s, h in zip(cat, harmful, strict=True) if s["category"] == c]
        assert b["n"] == len(sub) and b["score"] == pytest.approx(1 - sum(sub) / len(sub))
    fig = [s for s in samples if s["task"] == "catqa-figstep"]
    assert fig[0]["figstep_text"].endswith("1. \n2. \n3. ") and fig[0]["text_prompt"].startswith("The image shows")
    vqa = written["benchmarks"]["vqarad"]
    assert {"closed", "open", "overall"} <= set(vqa)
    assert all(s["n_tokens"] <= 6 for s in samples if "n_tokens" in s)


def test_over_refusal_catches_a_model_that_refuses_everything(qwen):
    """A judge-independent check: feed the aggregation replies that are all refusals."""
    from graft.evals.scoring import summarize_benign

    records = [{"category": "x", "refused": KeywordJudge().refusal("I'm sorry, I cannot help.") is not None}] * 4
    assert summarize_benign(records)["over_refusal"] == 1.0
    res = evaluate(qwen, tasks=["benign"], data=fixture_data(), max_new_tokens=4)
    assert 0.0 <= res.summary["over_refusal"] <= 1.0 and res.benchmarks["benign"]["n"] == 4


def test_text_model_rejects_figstep_when_named_and_skips_it_in_a_suite(tiny_llama):
    engine = HFBackend.load(tiny_llama, device="cpu")
    with pytest.raises(IncompatibleError, match="'catqa-figstep' needs an image-text model"):
        evaluate(engine, tasks="catqa,catqa-figstep", data=fixture_data())
    res = evaluate(engine, suite="safety", data=fixture_data(), limit=2, max_new_tokens=3)
    assert set(res.skipped) == {"catqa-figstep", "hexphi-figstep", "medsafetybench-figstep", "benign-figstep"}
    assert {"catqa", "hexphi", "medsafetybench", "benign"} == set(res.benchmarks)


def test_limit_is_stratified_and_cache_reuses_verdicts(tiny_llama, tmp_path):
    engine = HFBackend.load(tiny_llama, device="cpu")
    cache = tmp_path / "verdicts.sqlite"
    first = evaluate(engine, tasks=["catqa"], data=fixture_data(), limit=6, seed=7, cache=cache, max_new_tokens=5)
    n_cats = len({it.category for it in load_catqa(fixture_data().catqa)})
    assert first.benchmarks["catqa"]["n"] == 6 and len(first.benchmarks["catqa"]["by_category"]) == n_cats
    again = evaluate(engine, tasks=["catqa"], data=fixture_data(), limit=6, seed=7, cache=cache, max_new_tokens=5)
    assert again.timing["catqa"]["cached"] == 6 and again.samples == first.samples
    # Changing the weights changes the content hash, so nothing is reused.

    with torch.no_grad():
        engine.model.lm_head.weight.mul_(1.5)
    changed = evaluate(engine, tasks=["catqa"], data=fixture_data(), limit=6, seed=7, cache=cache,
                       max_new_tokens=5)
    assert changed.timing["catqa"]["cached"] == 0
    assert changed.model["content_hash"] != first.model["content_hash"]


def test_rest_scores_the_items_the_subset_leaves_out(tiny_llama):
    engine = HFBackend.load(tiny_llama, device="cpu")
    subset = evaluate(engine, tasks=["catqa"], data=fixture_data(), fraction=0.5, seed=3, max_new_tokens=3)
    rest = evaluate(engine, tasks=["catqa"], data=fixture_data(), fraction=0.5, seed=3, rest=True, max_new_tokens=3)
    every = evaluate(engine, tasks=["catqa"], data=fixture_data(), max_new_tokens=3)
    ids = {s["id"] for s in subset.samples}
    assert ids.isdisjoint(s["id"] for s in rest.samples)
    assert sorted(ids | {s["id"] for s in rest.samples}) == sorted(s["id"] for s in every.samples)
    # The scores add up: the two parts' refusals are all of the full run's.
    n_sub, n_rest = subset.benchmarks["catqa"]["n"], rest.benchmarks["catqa"]["n"]
    assert n_sub + n_rest == every.benchmarks["catqa"]["n"]
    assert subset.score("catqa") * n_sub + rest.score("catqa") * n_rest == \
        pytest.approx(every.score("catqa") * (n_sub + n_rest))
    assert rest.config["rest"] is True


def test_generation_mode_mc(tiny_llava):
    res = evaluate(tiny_llava, tasks=["medqa", "pubmedqa"], data=fixture_data(), mc_mode="generate",
                   max_new_tokens=4, device="cpu")
    assert res.benchmarks["medqa"]["metric"] == "accuracy (generate)"
    assert all("pred" in s for s in res.samples)


def test_guard_judge_through_the_suite(tiny_llama, guards):
    res = evaluate(tiny_llama, tasks=["hexphi"], data=fixture_data(), judge=f"guard:{guards['unsafe']}",
                   max_new_tokens=3, device="cpu")
    assert res.score("hexphi") == 0.0 and res.judge["name"] == "guard"
    res = evaluate(tiny_llama, tasks=["hexphi"], data=fixture_data(), judge=f"guard:{guards['safe']}",
                   max_new_tokens=3, device="cpu")
    assert res.score("hexphi") == 1.0


def test_usage_errors(tiny_llama):
    with pytest.raises(UsageError, match="unknown task"):
        evaluate(tiny_llama, tasks="catqa,nope", data=fixture_data())
    with pytest.raises(UsageError, match="--tasks or --suite"):
        evaluate(tiny_llama, tasks="catqa", suite="safety", data=fixture_data())
    with pytest.raises(UsageError, match=re.escape("no data for benchmark 'medbullets4': it has no public hub copy; "
                                                   "its authors publish it on GitHub only: git clone https://github.com/"
                                                   "HanjieChen/ChatGPT-Medbullets; add a line 'medbullets4: PATH'")):
        evaluate(tiny_llama, tasks="medbullets4", data={"catqa": str(FIXTURES / "catqa/catqa_english.json")})
    with pytest.raises(UsageError, match="--mc-mode vote"):
        evaluate(tiny_llama, tasks="medqa", data=fixture_data(), mc_mode="vote")
    with pytest.raises(UsageError, match="--rest scores the items a --limit/--fraction subset leaves out"):
        evaluate(tiny_llama, tasks="medqa", data=fixture_data(), rest=True)
    with pytest.raises(UsageError, match="--limit 0"):
        evaluate(tiny_llama, tasks="medqa", data=fixture_data(), limit=0, device="cpu")
    with pytest.raises(UsageError, match="--dtype fp8"):
        evaluate(tiny_llama, tasks="medqa", data=fixture_data(), dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            evaluate(tiny_llama, tasks="medqa", data=fixture_data(), device="cuda")


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_command.__wrapped__)  # the command without graft's error boundary: errors as raised

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer in multi-command mode, as in graft's app
        pass

    return app


def test_cli_writes_results(tiny_llama, tmp_path):
    out = tmp_path / "results.json"
    r = CliRunner().invoke(_app(), ["eval", str(tiny_llama), "--tasks", "catqa,medqa", "--data",
                                    str(FIXTURES / "data.yaml"), "--out", str(out), "--limit", "3",
                                    "--max-new-tokens", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["benchmarks"]["catqa"]["n"] == 3 and res["benchmarks"]["medqa"]["n"] == 3
    assert res["config"]["limit"] == 3 and (tmp_path / "results.samples.jsonl").is_file()


def test_cli_errors_are_graft_errors_with_exit_codes(tiny_llama, tmp_path):
    r = CliRunner().invoke(_app(), ["eval", str(tiny_llama), "--tasks", "bogus", "--data",
                                    str(FIXTURES / "data.yaml"), "--out", str(tmp_path / "r.json")])
    assert isinstance(r.exception, GraftError) and r.exception.exit_code == UsageError.exit_code
    assert "unknown task(s) bogus" in str(r.exception)


def test_cli_fraction_and_existing_output(tiny_llama, tmp_path):
    out = tmp_path / "results.json"
    args = ["eval", str(tiny_llama), "--tasks", "hexphi", "--data", str(FIXTURES / "data.yaml"), "--out", str(out),
            "--fraction", "0.5", "--seed", "3", "--max-new-tokens", "3", "--device", "cpu"]
    assert CliRunner().invoke(_app(), args).exit_code == 0
    res = json.loads(out.read_text())
    assert res["benchmarks"]["hexphi"]["n"] == round(0.5 * res["benchmarks"]["hexphi"]["total_items"])
    assert res["judge"]["name"] == "keyword" and res["config"]["fraction"] == 0.5
    again = CliRunner().invoke(_app(), args)
    assert isinstance(again.exception, OutputError) and "--force" in str(again.exception)


def test_refusal_early_stop_keeps_every_verdict(qwen):
    """Stopping a reply at its first refusal phrase never changes a keyword verdict, and saves tokens."""
    kw = dict(data=fixture_data(), max_new_tokens=24)
    full = evaluate(qwen, tasks="catqa,hexphi,medsafetybench,benign", full_replies=True, **kw)
    fast = evaluate(qwen, tasks="catqa,hexphi,medsafetybench,benign", **kw)
    assert [s["verdict"] for s in fast.samples] == [s["verdict"] for s in full.samples]
    assert [s["refused"] for s in fast.samples] == [s["refused"] for s in full.samples]
    for a, b in zip(fast.samples, full.samples, strict=True):
        assert a["n_tokens"] <= b["n_tokens"] and b["response"].startswith(a["response"])
    assert any(a["n_tokens"] < b["n_tokens"] for a, b in zip(fast.samples, full.samples, strict=True))
    assert fast.benchmarks == full.benchmarks


def test_early_stop_counts_tokens_up_to_the_phrase(guards):
    """A model that says "illegal" forever is stopped after one token."""
    from graft.evals import Request

    engine = HFBackend.load(guards["safe"], device="cpu")
    tok = engine.tokenizer
    with torch.no_grad():
        engine.model.lm_head.weight.zero_()
        engine.model.lm_head.weight[tok.convert_tokens_to_ids("illegal")] = torch.linspace(0.5, 1.5, 32)
    reqs = [Request("a"), Request("a longer placeholder prompt")]
    full = engine.generate(reqs, max_new_tokens=8)
    fast = engine.generate(reqs, max_new_tokens=8, stop_when=lambda t: KeywordJudge().phrase(t) is not None)
    assert [g.n_tokens for g in full] == [8, 8] and [g.n_tokens for g in fast] == [1, 1]
    assert [g.text for g in fast] == ["illegal", "illegal"]


def test_malformed_data_fails_before_any_generation(tiny_llama, tmp_path):
    bad = tmp_path / "medqa.jsonl"
    bad.write_text('{"question": "q", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}}\n')
    data = {"catqa": str(FIXTURES / "catqa/catqa_english.json"), "medqa": str(bad)}
    seen: list[str] = []
    with pytest.raises(InputError, match=r"medqa\.jsonl:1: missing field 'answer_idx'"):
        evaluate(tiny_llama, tasks="catqa,medqa", data=data, device="cpu", progress=seen.append)
    assert seen == []  # nothing was run before the bad file was found
    with pytest.raises(InputError, match="--judge guard:"):
        evaluate(tiny_llama, tasks="catqa", data=data, judge=f"guard:{tmp_path}", device="cpu")
