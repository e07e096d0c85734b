"""Multiple-choice log-likelihood scores equal lm-eval's (HFLM) on the same in-memory model and items.

The reference runs lm-eval's own PubMedQA and MedQA prompt functions on the fixture items, converted in this
test to the layouts those tasks read (bigbio-style uppercase fields; GBaker's sent1/ending/label).
"""

from __future__ import annotations

import json
import math

import pytest

from graft.evals import HFBackend, evaluate, fixture_data
from graft.evals.loaders import load_medqa, load_pubmedqa
from graft.evals.scoring import mc_context, mc_targets

lm_eval = pytest.importorskip("lm_eval")


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_llama_bpe"])
def engine(request):
    """A word-level tokenizer, and a byte-level BPE one whose small vocabulary splits " yes" into several tokens."""
    return HFBackend.load(request.getfixturevalue(request.param), device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def lm_eval_samples(engine, tmp_path_factory):
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks.medqa.preprocess_medqa import doc_to_target as medqa_target
    from lm_eval.tasks.medqa.preprocess_medqa import doc_to_text as medqa_text
    from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text as pubmedqa_text

    data = fixture_data()
    tmp = tmp_path_factory.mktemp("lm_eval_data")
    raw = json.loads(data.pubmedqa.read_text())
    (tmp / "pubmedqa.jsonl").write_text("".join(json.dumps(v) + "\n" for v in raw.values()))
    rows = []
    for line in data.medqa.read_text().splitlines():
        r = json.loads(line)
        rows.append({"sent1": r["question"], **{f"ending{j}": r["options"][k] for j, k in enumerate("ABCD")},
                     "label": "ABCD".index(r["answer_idx"])})
    (tmp / "medqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def task(name, file, text, target, choices):
        return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(tmp / file)}},
                "test_split": "test", "output_type": "multiple_choice", "doc_to_text": text,
                "doc_to_target": target, "doc_to_choice": choices,
                "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}

    lm = HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=2)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task("ref_pubmedqa", "pubmedqa.jsonl", pubmedqa_text, "final_decision", ["yes", "no", "maybe"]),
               task("ref_medqa", "medqa.jsonl", medqa_text, medqa_target, ["A", "B", "C", "D"])],
        task_manager=TaskManager(include_defaults=False), log_samples=True, bootstrap_iters=0,
    )
    return out


@pytest.mark.parametrize(("ref", "loader", "name"), [("ref_pubmedqa", load_pubmedqa, "pubmedqa"),
                                                      ("ref_medqa", load_medqa, "medqa")])
def test_loglik_equals_lm_eval(engine, lm_eval_samples, ref, loader, name):
    items = loader(getattr(fixture_data(), name))
    samples = sorted(lm_eval_samples["samples"][ref], key=lambda s: s["doc_id"])
    assert len(samples) == len(items)
    for item, sample in zip(items, samples, strict=True):
        ours = engine.loglikelihood([(mc_context(item), " " + t) for t in mc_targets(item)])
        theirs = [r[0] for r in sample["resps"]]
        assert [a for a, _ in ours] == pytest.approx([float(ll) for ll, _ in theirs], abs=1e-4)
        assert [g for _, g in ours] == [bool(g) for _, g in theirs]
        assert sample["arguments"][0][0] == mc_context(item)  # same prompt text, built independently


@pytest.mark.parametrize(("ref", "name"), [("ref_pubmedqa", "pubmedqa"), ("ref_medqa", "medqa")])
def test_suite_accuracy_equals_lm_eval(engine, lm_eval_samples, ref, name):
    res = evaluate(engine, tasks=[name], data=fixture_data())
    theirs = lm_eval_samples["results"][ref]
    assert math.isclose(res.score(name), theirs["acc,none"])
    assert math.isclose(res.benchmarks[name]["acc_norm"], theirs["acc_norm,none"])
    assert res.benchmarks[name]["n"] == len(lm_eval_samples["samples"][ref])


def test_shared_context_and_multi_token_continuations(engine):
    """Options sharing a context share a forward pass; multi-token continuations sum over their tokens."""
    ctx = "Question: does placeholder treatment alpha help patients?\nAnswer:"
    pairs = [(ctx, " yes"), (ctx, " no"), (ctx, " placeholder option a alpha"), (ctx + " ", "maybe")]
    got = engine.loglikelihood(pairs, batch_size=2)
    one_by_one = [engine.loglikelihood([p], batch_size=1)[0] for p in pairs]
    assert [g for g, _ in got] == pytest.approx([g for g, _ in one_by_one], abs=1e-5)
    # Trailing space of the context moves to the continuation, as in lm-eval: " maybe" == "maybe" after "... ".
    assert got[3][0] == pytest.approx(engine.loglikelihood([(ctx, " maybe")])[0][0], abs=1e-6)
    # Reference: the sum of log-softmax at each continuation position of one full forward pass.
    import torch

    ids = engine.tokenizer.encode(ctx + " placeholder option a alpha")
    n_ctx = len(engine.tokenizer.encode(ctx))
    with torch.no_grad():
        lp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), -1)
    ref = sum(lp[i - 1, ids[i]].item() for i in range(n_ctx, len(ids)))
    assert got[2][0] == pytest.approx(ref, abs=1e-4)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_cuda_loglik_matches_cpu(tiny_llama, engine):
    gpu = HFBackend.load(tiny_llama, device="cuda", dtype="float32", batch_size=3)
    items = load_medqa(fixture_data().medqa)
    pairs = [(mc_context(it), " " + t) for it in items for t in mc_targets(it)]
    assert [a for a, _ in gpu.loglikelihood(pairs)] == pytest.approx([a for a, _ in engine.loglikelihood(pairs)],
                                                                     abs=1e-3)
