"""From a trial's scores to what the sampler optimises: objective values, the constraints, the screening
decision, and the rule that picks the best trial. Pure functions plus `TrialObjective`, the callable that runs one
trial (suggest → coefficients → scores → values), with the scorer injected.

* constrained: maximise safety subject to drop = reference − medical ≤ δ (Optuna constraint c = drop − δ ≤ 0)
  and, with `max_over_refusal` ρ, over-refusal ≤ ρ (a second constraint, over-refusal − ρ ≤ 0). CMA-ES has no
  constraint support: its value is safety − penalty · (sum of the constraints' positive parts) instead.
* pareto: maximise (safety, medical).
* weighted: maximise (1 − w) · safety + w · medical.

The medical reference is the λ = 0 baseline's medical score, i.e. the target itself. Why cap over-refusal: the
safety score is 1 − ASR, which a model that refuses everything maximises; only the benign prompts tell a
restored refusal from a broken model (measured on the toy world: uncapped, the best trial refused 91 % of them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from graft.core.recipe import Coefficients

from .config import Objective, SearchEvalConfig, Stage
from .samplers import folds_constraints
from .space import SearchSpace

INFEASIBLE = 1.0  # constraint value recorded for trials stopped before their medical score exists
FEASIBLE_TOL = 1e-12  # scores are means of counts: a constraint met exactly must not read as violated


class Scorer(Protocol):
    """Scores coefficients on one stage's tasks: {task: score in [0, 1]}. The real one grafts a resident model
    and runs the evaluation suite; tests inject plain functions of the coefficients."""

    def score(self, coefficients: Coefficients, stage: Stage) -> dict[str, float]: ...


class ItemScorer(Scorer, Protocol):
    """A scorer that can also give per-item outcomes ({task: {item id: outcome in [0, 1]}}): what the final
    in-sample / held-out report and its intervals need. `operator` is the graft operator (space key `operator`)."""

    def items(self, coefficients: Coefficients, stage: Stage, *, operator: str | dict[str, Any] | None = None
              ) -> dict[str, dict[str, float]]: ...


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def directions(objective: Objective) -> list[str]:
    return ["maximize", "maximize"] if objective.mode == "pareto" else ["maximize"]


def metric_names(objective: Objective, sampler: str) -> list[str]:
    """What each objective value is, in the words of `directions` (Optuna's dashboard labels its axes with them)."""
    if objective.mode == "pareto":
        return ["safety", "medical"]
    if objective.mode == "weighted":
        return [f"weighted ({1 - objective.weight:g}·safety + {objective.weight:g}·medical)"]
    if sampler == "cmaes":
        return [f"safety − {objective.penalty:g}·constraint excess"]
    return ["safety"]


def medical_drop(medical: float, reference: float) -> float:
    return reference - medical


def constraint_values(drop: float, over_refusal: float | None, objective: Objective) -> list[float]:
    """Every constraint of the objective (≤ 0 is feasible): the medical drop over δ, then, when
    `max_over_refusal` is set, over-refusal over ρ (an unmeasured over-refusal counts as refusing everything)."""
    values = [drop - objective.max_medical_drop]
    if objective.max_over_refusal is not None:
        values.append((1.0 if over_refusal is None else over_refusal) - objective.max_over_refusal)
    return values


def is_feasible(constraints: Sequence[float]) -> bool:
    return all(c <= FEASIBLE_TOL for c in constraints)


def objective_values(safety: float, medical: float, constraints: Sequence[float], objective: Objective,
                     sampler: str) -> list[float]:
    """What the sampler maximises; `constraints` from `constraint_values` (folded in for a sampler that cannot
    take them, CMA-ES)."""
    if objective.mode == "pareto":
        return [safety, medical]
    if objective.mode == "weighted":
        return [(1 - objective.weight) * safety + objective.weight * medical]
    if folds_constraints(sampler):
        return [safety - objective.penalty * sum(max(0.0, c) for c in constraints)]
    return [safety]


def uses_constraints(objective: Objective, sampler: str) -> bool:
    """Whether the sampler receives the constraints (constrained mode, any sampler that does not fold them)."""
    return objective.mode == "constrained" and not folds_constraints(sampler)


def constraints_of(user_attrs: Mapping[str, Any], objective: Objective) -> list[float]:
    """What the sampler's `constraints_func` returns for a finished trial: its recorded constraints, or all
    infeasible for a trial stopped before its scores existed."""
    values = user_attrs.get("constraints")
    if values is not None:
        return [float(v) for v in values]
    if user_attrs.get("constraint") is not None:  # a trial recorded before over-refusal could be capped
        return [float(user_attrs["constraint"])]
    return [INFEASIBLE] * (1 + (objective.max_over_refusal is not None))


def selection_key(safety: float, medical: float, feasible: bool, value: float, objective: Objective) -> tuple:
    """Larger is better. Weighted: the weighted value. Constrained and Pareto: feasible (every constraint met)
    first, then safety, then medical (in Pareto mode this picks one point of the front for best_recipe.yaml)."""
    if objective.mode == "weighted":
        return (value, safety, medical)
    return (feasible, safety, medical)


def screening_verdict(screening: float, incumbent: float | None, config: SearchEvalConfig) -> str | None:
    """Why a trial stops after screening, or None to go on. `incumbent`: the best screening score of a finished
    trial (the trial is hopeless when it trails it by more than `below_best_by`)."""
    s = config.screening
    if s is None:
        return None
    if screening < s.threshold:
        return f"screening safety {screening:.4f} < threshold {s.threshold:g}"
    if s.below_best_by is not None and incumbent is not None and screening < incumbent - s.below_best_by:
        return f"screening safety {screening:.4f} trails the best finished trial's {incumbent:.4f} by more " \
               f"than {s.below_best_by:g}"
    return None


@dataclass(frozen=True)
class TrialScores:
    scores: dict[str, float]
    safety: float
    medical: float
    over_refusal: float | None


def summarize(scores: Mapping[str, float], config: SearchEvalConfig) -> TrialScores:
    """Safety and medical are plain means over the configured tasks (each task weighs the same); over-refusal is
    the highest share refused over the benign tasks (text prompts, and prompts typed into images when listed), so
    a cap on it caps each of them."""
    refused = [1.0 - scores[t] for t in config.benign_tasks() if t in scores]
    over = max(refused) if refused else None
    return TrialScores(dict(scores), mean([scores[t] for t in config.safety]),
                       mean([scores[t] for t in config.medical]), over)


class Pruned(Exception):
    """The trial stopped at screening (the study records it as PRUNED)."""


class TrialLike(Protocol):
    """The part of `optuna.trial.Trial` a trial needs."""

    number: int

    @property
    def user_attrs(self) -> dict[str, Any]: ...

    def set_user_attr(self, key: str, value: Any) -> None: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Sequence[str]) -> str: ...


class TrialObjective:
    """Runs one trial: parameters → coefficients → (screening) → safety and medical scores → values.

    Everything the study's tools read later is stored in `user_attrs`: `coefficients` (the
    Coefficients as JSON: the contract with `graft inspect`), `scores` per task, `safety`, `medical`,
    `medical_drop`, `constraint` (the medical one), `constraints` (all of them), `feasible`, `screening`,
    `baseline` (for enqueued baselines), `seconds`.
    """

    def __init__(self, space: SearchSpace, config: SearchEvalConfig, scorer: Scorer, *, num_layers: int,
                 reference: float, sampler: str, incumbent: Callable[[], float | None] = lambda: None):
        self.space, self.config, self.scorer = space, config, scorer
        self.num_layers, self.reference, self.sampler = num_layers, reference, sampler
        self.incumbent = incumbent

    def __call__(self, trial: TrialLike) -> list[float]:
        started = time.perf_counter()
        baseline = trial.user_attrs.get("baseline")
        coefficients = self.space.suggest(trial, self.num_layers)
        operator = self.space.suggest_operator(trial)
        trial.set_user_attr("coefficients", coefficients.model_dump(mode="json"))
        trial.set_user_attr("operator", operator)
        # A scorer written before operators existed takes (coefficients, stage): pass the operator only when the
        # space sets one.
        extra = {} if operator is None else {"operator": operator}
        scores: dict[str, float] = {}
        if self.config.screening is not None:
            screened = self.scorer.score(coefficients, self.config.stage("screening"), **extra)
            screening = mean([screened[t] for t in self.config.screening.tasks])
            trial.set_user_attr("screening", screening)
            verdict = None if baseline else screening_verdict(screening, self.incumbent(), self.config)
            if verdict is not None:
                trial.set_user_attr("scores", {f"screening:{t}": v for t, v in screened.items()})
                trial.set_user_attr("pruned", verdict)
                trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
                raise Pruned(verdict)
        scores.update(self.scorer.score(coefficients, self.config.stage("safety"), **extra))
        scores.update(self.scorer.score(coefficients, self.config.stage("medical"), **extra))
        result = summarize(scores, self.config)
        objective = self.config.objective
        drop = medical_drop(result.medical, self.reference)
        constraints = constraint_values(drop, result.over_refusal, objective)
        values = objective_values(result.safety, result.medical, constraints, objective, self.sampler)
        for key, value in {
            "scores": result.scores, "safety": result.safety, "medical": result.medical,
            "over_refusal": result.over_refusal, "medical_drop": drop, "constraint": constraints[0],
            "constraints": constraints, "feasible": is_feasible(constraints),
            "seconds": round(time.perf_counter() - started, 3),
        }.items():
            trial.set_user_attr(key, value)
        if any(math.isnan(v) for v in values):
            raise ValueError(f"trial {trial.number}: a score is NaN ({result.scores})")
        return values


__all__ = ["ItemScorer", "Pruned", "Scorer", "TrialObjective", "TrialScores", "constraint_values", "constraints_of",
           "directions", "is_feasible", "medical_drop", "metric_names", "objective_values", "screening_verdict",
           "selection_key", "summarize"]
