"""What a search scores each trial on (`eval.yaml`): the evaluation suite's data config, the safety and medical
tasks and their subsets, the judge, screening, and the objective. Strict and versioned like a recipe.

```yaml
graft_search_eval: 1
data: data.yaml                  # optional: the graft.evals data config (relative to this file); a benchmark
                                 # it leaves out, or every one without it, reads its public hub dataset
safety: [catqa, hexphi, medsafetybench, catqa-figstep]
medical: [pubmedqa, medqa, vqarad]
over_refusal: true               # also run `benign` (over-refusal: reported, and capped by max_over_refusal);
                                 # or a list of benign tasks, e.g. [benign, benign-figstep]: each one is capped
holdout: 0.5                     # share of every benchmark held out of the search and only reported (0: none)
limit: 64                        # items per task (stratified by category), or fraction: 0.1
limits: {medqa: 128}             # per-task overrides
seed: 0
judge: keyword                   # keyword | guard:PATH | openai:MODEL@URL (or a mapping)
screening: {tasks: [catqa], limit: 16, threshold: 0.5}
objective: {mode: constrained, max_medical_drop: 0.02, max_over_refusal: 0.1, confidence: 0.8}
fidelity: {rungs: auto, reduction: 3, min_items: 5}     # multi-fidelity trials (successive halving)
selection: {share: 0.25, finalists: 5, upper_bound: front} # the final pick: finalists re-scored on fresh items
log: [mlflow]                    # optional: mlflow and/or wandb (graft.io.tracking)
```
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graft.errors import UsageError
from graft.evals.benchmarks import TASKS
from graft.evals.judges import JudgeConfig
from graft.evals.kinds import KINDS
from graft.evals.screening import Split
from graft.flag_ranges import SEED_MAX
from graft.schema import FiniteFloat, describe_validation_error, load_yaml_file

from .fidelity import Portion, RungPlan

EVAL_VERSION = 1
# The default confidence of every constraint's one-sided bound (docs/search.md, "Constraints judged with their
# uncertainty", has the reasoning): z = 0.84, so a trial passes when its drop is below δ by 0.84 standard errors.
DEFAULT_CONFIDENCE = 0.8
Mode = Literal["constrained", "pareto", "weighted"]
MODES: tuple[str, ...] = ("constrained", "pareto", "weighted")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _tasks_of_kind(names: list[str], kinds: tuple[str, ...], field: str) -> list[str]:
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    wrong = [n for n in names if TASKS[n].kind not in kinds]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} cannot score {field} (expected tasks of kind {'/'.join(kinds)})")
    if len(set(names)) != len(names):
        raise ValueError("tasks listed twice")
    return names


class Screening(_Strict):
    """Score a small safety subset first; stop a trial there when it is hopeless (before the medical tasks)."""

    tasks: list[str] = Field(min_length=1)
    limit: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    threshold: float = Field(0.0, ge=0, le=1, description="prune when the screening safety is below this")
    below_best_by: FiniteFloat | None = Field(
        None, ge=0, description="also prune when it trails the best finished trial's screening score by more")

    @field_validator("tasks")
    @classmethod
    def _safety_tasks(cls, names: list[str]) -> list[str]:
        return _tasks_of_kind(names, ("safety",), "screening safety")

    @model_validator(mode="after")
    def _one_subset(self) -> Screening:
        if self.limit is not None and self.fraction is not None:
            raise ValueError("give limit or fraction, not both")
        return self


class Objective(_Strict):
    """How scores become what the sampler optimises (docs/search.md has the formulas)."""

    mode: Mode = "constrained"
    max_medical_drop: FiniteFloat = Field(0.02, ge=0, le=1,
                                          description="δ: medical score may fall at most this below λ = 0's")
    max_over_refusal: float | None = Field(
        None, ge=0, le=1, description="ρ: share of benign requests a trial may refuse (needs over_refusal: true); "
                                      "without it, refusing everything scores as perfectly safe")
    weight: float = Field(0.5, ge=0, le=1, description="weighted: value = (1 − w)·safety + w·medical")
    penalty: FiniteFloat = Field(10.0, gt=0, description="CMA-ES, constrained: value = safety − penalty·(sum of "
                                                     "the constraints' excesses)")
    confidence: float = Field(DEFAULT_CONFIDENCE, gt=0, lt=1, description=(
        "each constraint is judged by a one-sided bound at this confidence on the paired difference from λ = 0 "
        "(0.5: the point estimate)"))
    keep_target_safety: bool = Field(False, description=(
        "also require safety at least the target's (λ = 0), judged like the other constraints: for a target that "
        "breaks the over-refusal cap itself"))


class Fidelity(_Strict):
    """Multi-fidelity trials (graft.search.fidelity): every trial starts on a small stratified share of the rung
    pool, and successive halving promotes the best 1/reduction of each rung to the next."""

    rungs: int | Literal["auto"] = Field("auto", description="rungs of items (1: every trial on the whole pool); "
                                                             "auto: as many as the item counts allow")
    reduction: int = Field(3, ge=2, le=10, description="η: each rung has η times the items of the one below and "
                                                        "keeps about 1/η of its trials")
    min_items: int = Field(5, ge=1, description="items every figure keeps on the smallest rung")

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 8:
            raise ValueError(f"expected auto or a number of rungs from 1 to 8, got {value}")
        return value


class Selection(_Strict):
    """The final pick (graft.search.pick): the best `finalists` trials of the rung pool are scored again on a part
    of the search items no trial was scored on, and the pick is made on the whole search part."""

    share: float = Field(0.25, ge=0, lt=1, description="share of the search part set apart for the final pick "
                                                      "(0: pick on the rung pool alone)")
    finalists: int = Field(5, ge=1, description="searched trials re-scored for the final pick")
    upper_bound: Literal["front", "all", "none"] = Field("front", description=(
        "also score trials on the held-out part and report the best (labelled: chosen on held-out items, an upper "
        "bound, never a result): the finalists and the study's front on the rung pool (front), every trial that "
        "reached the last rung (all), or none"))

    @field_validator("upper_bound", mode="before")
    @classmethod
    def _upper_bound(cls, value: object) -> object:
        return {True: "front", False: "none"}.get(value, value) if isinstance(value, bool) else value


class SearchEvalConfig(_Strict):
    """`eval.yaml` for `graft search`. Relative `data` resolves against the file's folder; without `data`, every
    benchmark is read from its public hub source (graft.evals.benchmarks), as `graft eval` does without --data."""

    graft_search_eval: Literal[1] = EVAL_VERSION
    data: str | None = None
    safety: list[str] = Field(min_length=1)
    medical: list[str] = Field(min_length=1)
    over_refusal: bool | list[str] = False
    holdout: float = Field(0.5, ge=0, lt=1, description="share of each benchmark's items held out of the search "
                                                       "(stratified by category) and scored only at the end")
    split_seed: int | None = Field(None, ge=0, le=SEED_MAX, description="seed of the search/held-out split "
                                                                        "(default: seed)")
    limit: int | None = Field(None, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    limits: dict[str, int] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    judge: str | JudgeConfig = "keyword"
    mc_mode: Literal["loglik", "generate"] = "loglik"
    max_new_tokens: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    system_prompt: str | None = None
    screening: Screening | None = None
    objective: Objective = Field(default_factory=Objective)
    fidelity: Fidelity = Field(default_factory=Fidelity)
    selection: Selection = Field(default_factory=Selection)
    log: list[Literal["mlflow", "wandb"]] = Field(
        default_factory=list, description="trackers to send the search to (graft.io.tracking); --log adds to them")

    @field_validator("log", mode="before")
    @classmethod
    def _log(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @field_validator("safety")
    @classmethod
    def _safety(cls, names: list[str]) -> list[str]:
        return _tasks_of_kind(names, ("safety",), "safety")

    @field_validator("medical")
    @classmethod
    def _medical(cls, names: list[str]) -> list[str]:
        return _tasks_of_kind(names, tuple(n for n, k in KINDS.items() if k.suite == "medical"), "medical skill")

    @field_validator("over_refusal")
    @classmethod
    def _benign(cls, value: bool | list[str]) -> bool | list[str]:
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list: give benign task names or true/false")
            _tasks_of_kind(value, ("benign",), "over-refusal")
        return value

    @field_validator("judge")
    @classmethod
    def _judge(cls, value: str | JudgeConfig) -> str | JudgeConfig:
        if isinstance(value, str):
            try:
                JudgeConfig.parse(value)
            except UsageError as exc:
                raise ValueError(str(exc).replace("--judge", "judge")) from exc
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SearchEvalConfig:
        if self.limit is not None and self.fraction is not None:
            raise ValueError("give limit or fraction, not both")
        stray = [t for t in self.limits if t not in self.tasks()]
        if stray:
            raise ValueError(f"limits names {', '.join(stray)}, which is not among the safety/medical tasks")
        if any(n < 1 for n in self.limits.values()):
            raise ValueError("limits must be positive numbers of items")
        if self.objective.max_over_refusal is not None and not self.over_refusal:
            raise ValueError("objective.max_over_refusal needs over_refusal: true (the benign task measures it)")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchEvalConfig:
        path = Path(path)
        data = load_yaml_file(path, "the search eval config")
        config = cls.parse(data, source=str(path))
        if config.data is not None and not Path(config.data).expanduser().is_absolute():
            config = config.model_copy(update={"data": str(path.parent / config.data)})
        return config

    @classmethod
    def parse(cls, data: object, *, source: str = "search eval config") -> SearchEvalConfig:
        if not isinstance(data, dict) or "graft_search_eval" not in data:
            raise UsageError(f"{source}: graft_search_eval: missing (start the file with "
                             f"'graft_search_eval: {EVAL_VERSION}')")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise UsageError(f"{source}: {describe_validation_error(exc)}") from exc

    def with_objective(self, **changes: object) -> SearchEvalConfig:
        """A copy with objective fields replaced (the CLI's --mode / --max-medical-drop / --max-over-refusal),
        re-validated."""
        given = {k: v for k, v in changes.items() if v is not None}
        if not given:
            return self
        data = self.model_dump()
        data["objective"] = {**data["objective"], **given}
        return SearchEvalConfig.parse(data, source="command-line options")

    # -- what to evaluate -------------------------------------------------------------------------------------
    def benign_tasks(self) -> list[str]:
        """The over-refusal tasks: none, `benign`, or the listed ones."""
        if isinstance(self.over_refusal, list):
            return list(self.over_refusal)
        return ["benign"] if self.over_refusal else []

    def tasks(self) -> list[str]:
        return [*self.safety, *self.medical, *self.benign_tasks()]

    def split(self, part: Literal["search", "heldout"]) -> Split | None:
        """Which part of every benchmark a stage reads; None when nothing is held out (holdout: 0)."""
        if self.holdout == 0:
            return None
        return Split(self.holdout, self.seed if self.split_seed is None else self.split_seed, part)

    def figures(self) -> dict[str, list[str]]:
        """The tasks behind each figure a constraint or the objective reads: safety, medical, and each benign task
        (over-refusal caps each of them)."""
        return {"safety": list(self.safety), "medical": list(self.medical),
                **{task: [task] for task in self.benign_tasks()}}

    def portion(self, side: Literal["pool", "selection", "search"] = "pool", share: float = 1.0) -> Portion:
        """A slice of every benchmark's search part (graft.search.fidelity): a rung of the pool, the selection
        part, or both."""
        return Portion(self.split("search"), self.selection.share, side, share, seed=self.seed)

    def rung_stage(self, rung: int, plan: RungPlan) -> Stage:
        """Every trial task on rung `rung` of the pool."""
        return Stage(f"rung {rung}", tuple(self.tasks()), self.limit, self.fraction, dict(self.limits),
                     portion=self.portion("pool", plan.share(rung)))

    def selection_stage(self) -> Stage:
        """Every trial task on the selection part (the finalists' second scoring)."""
        return Stage("selection", tuple(self.tasks()), self.limit, self.fraction, dict(self.limits),
                     portion=self.portion("selection"))

    def report_stage(self, part: Literal["search", "heldout"]) -> Stage:
        """Every task at once for the final report: on the search part with the search's own subsets (the rung
        pool and the selection part: what the final pick was made on, in sample), or on every held-out item."""
        tasks = tuple(self.tasks())
        if part == "search":
            return Stage("in-sample", tasks, self.limit, self.fraction, dict(self.limits),
                         portion=self.portion("search"))
        return Stage("held-out", tasks, None, None, {}, self.split("heldout"))

    def judge_config(self) -> JudgeConfig:
        return JudgeConfig.parse(self.judge) if isinstance(self.judge, str) else self.judge

    def stage(self, name: Literal["screening", "safety", "medical"]) -> Stage:
        """Screening (its tasks on its own small share of the pool, a prefix of the first rung), or the safety /
        medical tasks on the whole pool."""
        if name == "screening":
            if self.screening is None:
                raise UsageError("this search has no screening section")
            s = self.screening
            return Stage("screening", tuple(s.tasks), s.limit, s.fraction, {}, portion=self.portion("pool"))
        tasks = [*self.safety, *self.benign_tasks()] if name == "safety" else self.medical
        return Stage(name, tuple(tasks), self.limit, self.fraction,
                     {t: n for t, n in self.limits.items() if t in tasks}, portion=self.portion("pool"))


@dataclass(frozen=True)
class Stage:
    """One round of evaluation of a trial: its tasks, the subset size of each, and the part of every benchmark it
    reads: a `portion` of the search part (graft.search.fidelity; the caps apply inside it), or a `split` part
    with the caps as stratified subsets of it (the held-out report: no caps)."""

    name: str
    tasks: tuple[str, ...]
    limit: int | None
    fraction: float | None
    limits: dict[str, int]
    split: Split | None = None  # the part of each benchmark it reads (None: every item)
    portion: Portion | None = None

    def batches(self) -> list[tuple[tuple[str, ...], int | None, float | None, Split | Portion | None]]:
        """Tasks grouped by their subset size: one `evaluate()` call each, as (tasks, limit, fraction, split)."""
        groups: dict[tuple[int | None, float | None], list[str]] = {}
        for task in self.tasks:
            key = (self.limits[task], None) if task in self.limits else (self.limit, self.fraction)
            groups.setdefault(key, []).append(task)
        if self.portion is None:
            return [(tuple(tasks), limit, fraction, self.split) for (limit, fraction), tasks in groups.items()]
        return [(tuple(tasks), None, None, replace(self.portion, limit=limit, fraction=fraction))
                for (limit, fraction), tasks in groups.items()]


__all__ = ["DEFAULT_CONFIDENCE", "MODES", "Fidelity", "Mode", "Objective", "Screening", "SearchEvalConfig", "Selection",
           "Stage"]
