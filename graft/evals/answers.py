"""How a benchmark's question is asked and its reply read, item by item, with no registry in sight: the
multiple-choice formats (`ChoiceFormat`, `LETTERED`, `ABSTRACT_YES_NO_MAYBE`: the log-likelihood prompt, the scored
continuations, the generation prompt and the reply parser) and VQA's short-answer matching (`score_vqa`). A
benchmark declaration (graft.evals.benchmarks) names the ones it uses; graft.evals.scoring dispatches on them.

Log-likelihood prompts follow lm-eval: PubMedQA "Abstract: ...\\nQuestion: ...\\nAnswer:" with choices yes/no/maybe,
MedQA/Medbullets "Question: ...\\nA. ...\\nAnswer:" with the option letters. Generation mode (MedEvalKit style) asks
for the letter (or the word) and reads it out of the reply.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass

from .loaders import Item

LETTERS = "ABCDE"


# ------------------------------------------------------------------ multiple choice
@dataclass(frozen=True)
class ChoiceFormat:
    """How a multiple-choice benchmark is asked and read: a benchmark declaration names one, so scoring never
    branches on a benchmark's name.

    `context` is the log-likelihood prompt and `targets` the continuations scored after it (" " + target);
    `generation_prompt` asks for the answer in words and `extract` reads the option out of a free-text reply.
    `Item.answer` must be one of `targets(item)`.
    """

    name: str
    context: Callable[[Item], str]
    targets: Callable[[Item], list[str]]
    generation_prompt: Callable[[Item], str]
    extract: Callable[[str, Item], str | None]


def _lettered_context(item: Item) -> str:
    options = "".join(f"{LETTERS[i]}. {c}\n" for i, c in enumerate(item.choices))
    return f"Question: {item.prompt}\n{options}Answer:"


def _letters(item: Item) -> list[str]:
    return list(LETTERS[: len(item.choices)])


def _lettered_prompt(item: Item) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
    return f"{item.prompt}\n{options}\nAnswer with the option's letter from the given choices directly."


def _extract_letter(text: str, item: Item) -> str | None:
    letters = LETTERS[: len(item.choices)]
    for pattern in (rf"answer is:?\s*\(?\**([{letters}])\b", rf"^\s*\(?\**([{letters}])\**\)?(?:[.:)\s]|$)",
                    rf"\b([{letters}])[.)]", rf"\b([{letters}])\b"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    lowered = text.lower()
    hits = [letters[i] for i, c in enumerate(item.choices) if c and c.lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def _extract_yes_no_maybe(text: str, item: Item) -> str | None:
    m = re.search(r"\b(yes|no|maybe)\b", text.lower())
    return m.group(1) if m else None


# MedQA/Medbullets in lm-eval: "Question: ...\nA. ...\nAnswer:", the option letters scored.
LETTERED = ChoiceFormat("lettered", _lettered_context, _letters, _lettered_prompt, _extract_letter)
# PubMedQA in lm-eval: "Abstract: ...\nQuestion: ...\nAnswer:", the words yes/no/maybe scored.
ABSTRACT_YES_NO_MAYBE = ChoiceFormat(
    "abstract-yes-no-maybe",
    context=lambda item: f"Abstract: {item.context}\nQuestion: {item.prompt}\nAnswer:",
    targets=lambda item: list(item.choices),
    generation_prompt=lambda item: (f"Context: {item.context}\nQuestion: {item.prompt}\n"
                                    "Answer the question with yes, no or maybe directly."),
    extract=_extract_yes_no_maybe,
)


# ------------------------------------------------------------------ VQA
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."


def normalize_answer(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    words = [w for w in text.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def score_vqa(item: Item, response: str) -> dict:
    gold = normalize_answer(item.answer)
    if item.answer_type == "closed":
        m = re.search(r"\b(yes|no)\b", response.lower())
        pred = m.group(1) if m else normalize_answer(response)
    else:
        pred = normalize_answer(response)
    return {"pred": pred, "correct": pred == gold}
