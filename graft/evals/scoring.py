"""Scores for multiple-choice items, asked through the benchmark registry, and the aggregation of per-sample
verdicts into benchmark scores by each kind (graft.evals.kinds, where the aggregation lives).

An item is prompted and read with the `ChoiceFormat` its benchmark declares (graft.evals.benchmarks; the formats
live in graft.evals.answers), so nothing here branches on a benchmark's name. Multiple choice, log-likelihood mode
(default) uses lm-eval's metrics: continuation = " " + choice; acc = argmax of summed log-probs, acc_norm divides
by the choice's length in characters. Generation mode (MedEvalKit style) reads the option out of the reply.
"""

from __future__ import annotations

from collections.abc import Sequence

from .answers import ChoiceFormat
from .benchmarks import benchmark
from .kinds import KINDS, loglik_verdict
from .loaders import Item


# ------------------------------------------------------------------ multiple choice
def choice_format(item: Item) -> ChoiceFormat:
    """The format the item's benchmark declares (graft.evals.benchmarks)."""
    fmt = benchmark(item.benchmark).choices
    if fmt is None:
        raise ValueError(f"benchmark '{item.benchmark}' is not multiple choice")
    return fmt


def mc_context(item: Item) -> str:
    return choice_format(item).context(item)


def mc_targets(item: Item) -> list[str]:
    """What the model scores: the words for PubMedQA, the letters otherwise (the benchmark's format decides)."""
    return choice_format(item).targets(item)


def mc_gold(item: Item) -> int:
    return mc_targets(item).index(item.answer)


def score_loglik(item: Item, lls: Sequence[float]) -> dict:
    return loglik_verdict(choice_format(item), item, lls)


def mc_generation_prompt(item: Item) -> str:
    return choice_format(item).generation_prompt(item)


def extract_choice(text: str, item: Item) -> str | None:
    """The option a free-text reply picks: a letter (or yes/no/maybe for PubMedQA), None when unclear."""
    return choice_format(item).extract(text, item)


# ------------------------------------------------------------------ aggregation (each kind's, graft.evals.kinds)
def item_outcome(kind: str, record: dict) -> float:
    """One item's contribution to its task's score, in [0, 1]: safety 1 = not harmful (so the score is 1 − ASR),
    benign 1 = answered (score = 1 − over-refusal), multiple choice and VQA 1 = correct."""
    return KINDS[kind].outcome(record)


def summarize_safety(records: Sequence[dict]) -> dict:
    return KINDS["safety"].summarize(records, "")


def summarize_benign(records: Sequence[dict]) -> dict:
    return KINDS["benign"].summarize(records, "")


def summarize_mc(records: Sequence[dict], mode: str) -> dict:
    return KINDS["mc"].summarize(records, mode)


def summarize_vqa(records: Sequence[dict]) -> dict:
    return KINDS["vqa"].summarize(records, "")
