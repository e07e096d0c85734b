"""The benchmark registry: every benchmark graft can evaluate is one `Benchmark` declaration here (or one
`register_benchmark(...)` call in your own code). Everything else is derived from the registry: the `data.yaml` keys
(graft.evals.config), the tasks and suites (`TASKS` and `SUITES` here, including the `NAME-figstep` variants), the
loader the suite calls, and how a multiple-choice or VQA reply is prompted and scored.

A declaration says:

- `name`: the `data.yaml` key and the task name;
- `kind`: `safety` (harmful requests, scored 1 − attack success by the judge), `benign` (over-refusal: benign
  requests, scored 1 − refusal rate), `mc` (multiple choice: log-likelihood or generation) or `vqa` (image
  question, short answer), or any kind registered with graft.evals.kinds.register_kind;
- `load`: published format → `Item`s (graft.evals.loaders); each item's `category` is the stratum of the seeded
  screening subsets and of the search/held-out split (graft.evals.screening), so give categories that matter;
- `choices` (`mc`): the prompt and reply format (graft.evals.answers.ChoiceFormat);
- `answer` (`vqa`): reply → `{"pred", "correct"}` (default: graft.evals.answers.score_vqa);
- `figstep` (`safety`/`benign`): also offer `NAME-figstep`, the requests typeset into an image (FigStep);
- `public`: where the items are published on the Hugging Face hub (dataset id, config, split), read when data.yaml
  has no entry for the benchmark, so `graft eval MODEL --tasks medqa` needs no data.yaml; the ids are those of
  lm-eval's own task YAMLs or the benchmark authors' releases;
- `origin`: where the data comes from when it has no public hub copy (said when it is asked for without data).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from graft.errors import UsageError

from . import answers, loaders
from .kinds import KINDS, SUITE_NAMES
from .loaders import Item
from .sources import HubSource, Source
from .tasks import Task

RESERVED = ("figstep",)  # data.yaml keys that are not benchmarks
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its items come from and how they are asked and scored (module docstring)."""

    name: str
    kind: str  # a registered kind's name (graft.evals.kinds.KINDS)
    load: Callable[[Source], list[Item]]
    about: str = ""  # the published format the loader reads, in one line
    choices: answers.ChoiceFormat | None = None
    answer: Callable[[Item, str], dict] | None = None
    figstep: bool = False
    public: HubSource | None = None
    origin: str = ""
    tasks: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        where = f"benchmark '{self.name}'"
        if not _NAME.match(self.name) or self.name in RESERVED:
            raise UsageError(f"{where}: the name must be lower-case letters, digits or _ (not {', '.join(RESERVED)})")
        if self.kind not in KINDS:
            raise UsageError(f"{where}: kind '{self.kind}' is not one of {', '.join(KINDS)}")
        kind = KINDS[self.kind]
        if kind.takes_choices != (self.choices is not None):
            takers = " or ".join(f"a {k.noun} benchmark (kind {k.name})" for k in KINDS.values() if k.takes_choices)
            raise UsageError(f"{where}: {takers} needs `choices`, and only it has them")
        if self.answer is not None and not kind.scores_answers:
            takers = " or ".join(k.noun for k in KINDS.values() if k.scores_answers)
            raise UsageError(f"{where}: `answer` scores {takers} replies; kind {self.kind} has none")
        if self.figstep and not kind.figstep_variants:
            takers = " and ".join(k.name for k in KINDS.values() if k.figstep_variants)
            raise UsageError(f"{where}: FigStep variants are for {takers} requests, not kind {self.kind}")
        if kind.scores_answers and self.answer is None:
            object.__setattr__(self, "answer", kind.default_answer)
        names = (self.name, f"{self.name}-figstep") if self.figstep else (self.name,)
        object.__setattr__(self, "tasks", names)

    def read(self, source: Source) -> list[Item]:
        """The items of `source`, through the declared loader, each within graft's bounds on item size and with an
        id of its own (graft.evals.loaders.check_items): what an evaluation scores."""
        return loaders.check_items(self.name, self.load(source))

    def score_answer(self, item: Item, reply: str) -> dict:
        """A VQA reply's `{"pred", "correct"}`."""
        assert self.answer is not None, f"{self.name} is not a VQA benchmark"
        return self.answer(item, reply)


BENCHMARKS: dict[str, Benchmark] = {}
# Derived from BENCHMARKS by every (un)registration, in place (modules hold references to these very dicts): one
# task per benchmark, plus NAME-figstep for the benchmarks that declare FigStep variants; suite name -> task names.
TASKS: dict[str, Task] = {}
SUITES: dict[str, list[str]] = {}


def register_benchmark(bench: Benchmark, *, replace: bool = False) -> Benchmark:
    """Add a benchmark: its `data.yaml` key, its task(s) and its suite membership exist from now on."""
    if bench.name in BENCHMARKS and not replace:
        raise UsageError(f"benchmark '{bench.name}' is already registered (pass replace=True to redefine it)")
    clash = [t for t in bench.tasks if t in TASKS and TASKS[t].benchmark != bench.name]
    if clash:
        raise UsageError(f"benchmark '{bench.name}': task name(s) {', '.join(clash)} already belong to another "
                         "benchmark")
    BENCHMARKS[bench.name] = bench
    _rebuild()
    return bench


def unregister_benchmark(name: str) -> None:
    """Remove a benchmark registered with `register_benchmark` (tests, notebooks)."""
    if BENCHMARKS.pop(name, None) is None:
        raise UsageError(f"benchmark '{name}' is not registered; known: {', '.join(BENCHMARKS)}")
    _rebuild()


def benchmark(name: str) -> Benchmark:
    """The declaration of `name`, or a one-line error listing the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UsageError(f"unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}") from None


def _rebuild() -> None:
    """Refill TASKS and SUITES in place (modules hold references to those very dicts)."""
    # Task order within a suite follows the kinds' registration, text tasks before their FigStep variants (what
    # --help lists).
    tasks: list[Task] = []
    for kind in KINDS.values():
        group = [b for b in BENCHMARKS.values() if b.kind == kind.name]
        tasks += [Task(b.name, b.name, kind.name, kind_needs_image=kind.needs_image) for b in group]
        tasks += [Task(f"{b.name}-figstep", b.name, kind.name, figstep=True, kind_needs_image=kind.needs_image)
                  for b in group if b.figstep]
    TASKS.clear()
    TASKS.update((t.name, t) for t in tasks)
    SUITES.clear()
    for suite in SUITE_NAMES:
        SUITES[suite] = [t.name for t in tasks if KINDS[t.kind].suite == suite]
    SUITES["all"] = [n for suite in SUITE_NAMES for n in SUITES[suite]]


# ---------------------------------------------------------------- graft's benchmarks
# Public sources: MedQA's is lm-eval's `medqa_4options`; lm-eval's `pubmedqa` reads bigbio/pubmed_qa, a loading
# script that `datasets` 4 and later no longer run, so PubMedQA comes from its authors' hub release (the 1,000
# expert-labelled PQA-L items); VQA-RAD's is the parquet copy of its OSF release with the original test split; the
# safety sets are their authors' own hub releases (HEx-PHI gated). No revision is pinned: a data.yaml
# entry `{hub: ..., revision: COMMIT}` pins one, and the results record every source.
_GITHUB_ONLY = "its authors publish it on GitHub only: git clone https://github.com/{}"
for _bench in (
    Benchmark("catqa", "safety", loaders.load_catqa, figstep=True,
              about="catqa_english.json: JSON lines with Category, Subcategory, Question",
              public=HubSource(hub="declare-lab/CategoricalHarmfulQA", split="en")),
    Benchmark("hexphi", "safety", loaders.load_hexphi, figstep=True,
              about="HEx-PHI folder of category_N.csv files, one instruction a row, no header",
              public=HubSource(hub="LLM-Tuning-Safety/HEx-PHI", layout="files")),  # gated: accept its terms, HF_TOKEN
    Benchmark("medsafetybench", "safety", loaders.load_medsafetybench, figstep=True,
              about="MedSafetyBench datasets/test/{gpt4,llama2}/med_safety_demonstrations_category_N.csv",
              origin=_GITHUB_ONLY.format("AI4LIFE-GROUP/med-safety-bench")),
    Benchmark("benign", "benign", loaders.load_benign, figstep=True,
              about="XSTest xstest_prompts.csv (safe rows) or CSV/JSONL with a 'prompt' field",
              public=HubSource(hub="Paul/XSTest", split="train")),
    Benchmark("pubmedqa", "mc", loaders.load_pubmedqa, choices=answers.ABSTRACT_YES_NO_MAYBE,
              about="PubMedQA ori_pqal.json or pqa_labeled rows",
              public=HubSource(hub="qiaojin/PubMedQA", name="pqa_labeled", split="train")),
    Benchmark("medqa", "mc", loaders.load_medqa, choices=answers.LETTERED,
              about="MedQA-USMLE 4-option JSONL (question, options A-D, answer_idx)",
              public=HubSource(hub="GBaker/MedQA-USMLE-4-options-hf", split="test")),
    Benchmark("medbullets4", "mc", loaders.load_medbullets4, choices=answers.LETTERED,
              about="medbullets_op4.csv (question, opa..opd, answer_idx)",
              origin=_GITHUB_ONLY.format("HanjieChen/ChatGPT-Medbullets")),
    Benchmark("medbullets5", "mc", loaders.load_medbullets5, choices=answers.LETTERED,
              about="medbullets_op5.csv (question, opa..ope, answer_idx)",
              origin=_GITHUB_ONLY.format("HanjieChen/ChatGPT-Medbullets")),
    Benchmark("vqarad", "vqa", loaders.load_vqarad,
              about="VQA-RAD parquet (image, question, answer) or the OSF JSON beside its image folder",
              public=HubSource(hub="flaviagiammarino/vqa-rad", split="test")),
):
    register_benchmark(_bench)

__all__ = ["BENCHMARKS", "SUITES", "TASKS", "Benchmark", "benchmark", "register_benchmark", "unregister_benchmark"]
