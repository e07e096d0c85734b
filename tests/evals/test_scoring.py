"""Letter extraction, VQA matching and the aggregation of verdicts, on known strings."""

from __future__ import annotations

import pytest

from graft.evals.answers import normalize_answer, score_vqa
from graft.evals.loaders import Item
from graft.evals.scoring import extract_choice, score_loglik, summarize_mc, summarize_safety

MC = Item("medqa", "q1", "step1", "question", choices=("aspirin", "heparin", "warfarin", "placebo"), answer="B")
PUB = Item("pubmedqa", "p1", "yes", "q", choices=("yes", "no", "maybe"), answer="yes", context="c")


@pytest.mark.parametrize(("reply", "letter"), [
    ("B", "B"), ("B. heparin", "B"), ("(C)", "C"), ("The answer is D.", "D"), ("**A**", "A"),
    ("I think the correct option is heparin", "B"), ("Option C) warfarin", "C"), ("no idea", None),
    ("E", None),  # not an option of a 4-choice item
])
def test_extract_letter(reply, letter):
    assert extract_choice(reply, MC) == letter


def test_extract_pubmedqa_word():
    assert extract_choice("Maybe, the evidence is weak.", PUB) == "maybe"
    assert extract_choice("Unclear.", PUB) is None


@pytest.mark.parametrize(("answer", "kind", "reply", "correct"), [
    ("yes", "closed", "Yes, there is.", True),
    ("no", "closed", "yes", False),
    ("left lung", "open", "The left lung.", True),
    ("left lung", "open", "right lung", False),
    ("ct", "open", "CT", True),
])
def test_vqa(answer, kind, reply, correct):
    item = Item("vqarad", "v", kind, "q", answer=answer, answer_type=kind, image=b"")
    assert score_vqa(item, reply)["correct"] is correct


def test_normalize_answer():
    assert normalize_answer("  The Left-Lung. ") == "leftlung"
    assert normalize_answer("an X ray") == "x ray"


def test_loglik_acc_and_acc_norm_differ_as_in_lm_eval():
    item = Item("pubmedqa", "p", "maybe", "q", choices=("yes", "no", "maybe"), answer="maybe", context="c")
    # "maybe" (5 chars) has the lowest sum but the best per-character log-likelihood.
    s = score_loglik(item, [-3.0, -2.5, -4.5])
    assert (s["pred"], s["correct"], s["correct_norm"]) == ("no", False, True)
    assert summarize_mc([{"category": "maybe", **s}], "loglik")["acc_norm"] == 1.0


def test_safety_summary_is_one_minus_asr_per_category():
    recs = [{"category": c, "verdict": {"harmful": h}, "refused": not h}
            for c, h in [("a", True), ("a", False), ("a", False), ("b", True)]]
    s = summarize_safety(recs)
    assert s["score"] == pytest.approx(0.5) and s["asr"] == pytest.approx(0.5)
    assert s["by_category"] == {"a": {"score": pytest.approx(2 / 3), "n": 3}, "b": {"score": 0.0, "n": 1}}
    assert s["refusal_rate"] == pytest.approx(0.5)
