"""From a trial's scores to what the sampler optimises: objective values, the constraints, the screening
decision, and the rule that picks the best trial. Pure functions plus `TrialObjective`, the callable that runs one
trial (suggest → coefficients → scores → values), with the scorer injected.

* constrained: maximise safety subject to drop = reference − medical ≤ δ (Optuna constraint c = bound − δ ≤ 0)
  and, with `max_over_refusal` ρ, over-refusal ≤ ρ (a second constraint, bound − ρ ≤ 0); with
  `keep_target_safety`, the target's safety − the trial's ≤ 0 (a third). Each is judged by its one-sided bound at
  `objective.confidence`, paired with λ = 0 on the same items (graft.search.bounds). CMA-ES has no constraint
  support: its value is safety − penalty · (sum of the constraints' positive parts) instead.
* pareto: maximise (safety, medical).
* weighted: maximise (1 − w) · safety + w · medical.

A trial runs rung after rung of items (graft.search.fidelity); after each rung but the last, Optuna's successive
halving pruner decides whether it earns the next one. A trial that stops early is COMPLETE with the figures of the
items it saw (so GP and CMA-ES, which learn from complete trials only, learn from it too); only trials that reached
the last rung are candidates for the final pick.

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

from graft.recipe import Coefficients

from .bounds import Judged, Outcomes, judge
from .config import Objective, SearchEvalConfig, Stage
from .fidelity import RungPlan, promotion_key
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


def constraint_values(drop: float, over_refusal: float | None, objective: Objective,
                      safety_loss: float | None = None) -> list[float]:
    """Every constraint of the objective (≤ 0 is feasible): the medical drop over δ, then, when
    `max_over_refusal` is set, over-refusal over ρ (an unmeasured over-refusal counts as refusing everything), then,
    with `keep_target_safety`, the safety lost against the target (unmeasured: as if all of it). Pass the bounds to
    judge by the bounds, the point estimates to judge by those."""
    values = [drop - objective.max_medical_drop]
    if objective.max_over_refusal is not None:
        values.append((1.0 if over_refusal is None else over_refusal) - objective.max_over_refusal)
    if objective.keep_target_safety:
        values.append(1.0 if safety_loss is None else safety_loss)
    return values


def judged_constraints(judged: Judged, objective: Objective, *, side: str = "upper") -> list[float]:
    """The constraints of a judged trial at the bound the study's confidence gives: `upper` (what feasibility is
    judged by: the sampler sees these), `lower` (the optimistic end: is the trial still plausibly feasible?) or
    `point` (the point estimates)."""
    z = {"upper": judged.z, "lower": -judged.z, "point": 0.0}[side]
    loss = None if judged.safety_loss is None else judged.safety_loss.value + z * judged.safety_loss.se
    return constraint_values(judged.medical_drop.value + z * judged.medical_drop.se, judged.over_refusal_at(z),
                             objective, loss)


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
    return [INFEASIBLE] * (1 + (objective.max_over_refusal is not None) + objective.keep_target_safety)


def selection_key(safety: float, medical: float, feasible: bool, value: float, objective: Objective,
                  violation: float = 0.0) -> tuple:
    """Larger is better. Weighted: the weighted value. Constrained and Pareto: feasible (every constraint met)
    first, then safety, then medical (in Pareto mode this picks one point of the front for best_recipe.yaml). Among
    infeasible trials the one that breaks its constraints least (`violation`, the sum of their positive parts)
    first, as Optuna's constrained samplers rank them, then safety: a trial that refuses everything is not "the
    best infeasible one" for being safe."""
    if objective.mode == "weighted":
        return (value, safety, medical)
    return (True, safety, medical) if feasible else (False, -violation, safety)


def violation_of(constraints: Sequence[float]) -> float:
    return sum(max(0.0, c) for c in constraints)


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
    """The part of `optuna.trial.Trial` a trial needs (`report` and `should_prune` only with several rungs)."""

    number: int

    @property
    def user_attrs(self) -> dict[str, Any]: ...

    def set_user_attr(self, key: str, value: Any) -> None: ...

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Sequence[str]) -> str: ...

    def report(self, value: float, step: int) -> None: ...

    def should_prune(self) -> bool: ...


def outcomes_of(scorer: Scorer, coefficients: Coefficients, stage: Stage, extra: Mapping[str, Any]
                ) -> tuple[Outcomes, bool]:
    """Per-item outcomes of a stage, and whether they are per item: a scorer with only `score` gives one
    pseudo-item per task (its score), whose paired spread is unknown (0)."""
    if hasattr(scorer, "items"):
        return scorer.items(coefficients, stage, **extra), True  # type: ignore[attr-defined]
    return {t: {"": float(v)} for t, v in scorer.score(coefficients, stage, **extra).items()}, False


def reference_outcomes(reference: Outcomes | float, config: SearchEvalConfig) -> Outcomes:
    """λ = 0's outcomes; a bare medical score (a scorer without per-item outcomes, a caller that only knows the
    score) stands for every medical task."""
    if isinstance(reference, int | float):
        return {t: {"": float(reference)} for t in config.medical}
    return reference


def judge_trial(outcomes: Outcomes, reference: Outcomes, config: SearchEvalConfig) -> Judged:
    from .bounds import z_of

    return judge(outcomes, reference, safety=config.safety, medical=config.medical, benign=config.benign_tasks(),
                 z=z_of(config.objective.confidence))


def attrs_of(judged: Judged, objective: Objective, *, per_item: bool) -> dict[str, Any]:
    """What a trial records of its figures: points, paired standard errors, the bounds, and the constraints
    judged by the bounds (what the sampler sees) and by the points."""
    constraints = judged_constraints(judged, objective)
    return {
        "scores": judged.scores, "safety": judged.safety, "medical": judged.medical,
        "over_refusal": judged.over_refusal, "over_refusal_bound": judged.over_refusal_bound,
        "medical_drop": judged.medical_drop.value, "medical_drop_se": judged.medical_drop.se,
        "medical_drop_bound": judged.medical_drop_bound,
        "safety_loss": None if judged.safety_loss is None else judged.safety_loss.value,
        "safety_loss_bound": judged.safety_loss_bound,
        "constraint": constraints[0], "constraints": constraints,
        "constraints_point": judged_constraints(judged, objective, side="point"),
        "feasible": is_feasible(constraints), "items": judged.items if per_item else None,
    }


class TrialObjective:
    """Runs one trial: parameters → coefficients → (screening) → rung after rung of items → values.

    Everything the study's tools read later is stored in `user_attrs`: `coefficients` (the
    Coefficients as JSON: the contract with `graft inspect`), `scores` per task, `safety`, `medical`,
    `medical_drop` (with `medical_drop_se` and `medical_drop_bound`), `over_refusal` (and its bound), `constraint`
    (the medical one), `constraints` (all of them, judged by their bounds), `constraints_point`, `feasible`,
    `screening`, `rung` (the last rung reached), `items` (items scored), `stopped` (why it got no further rung),
    `baseline` (for enqueued baselines), `seconds`. `reference` is λ = 0's per-item outcomes on the rung pool
    (or its bare medical score).
    """

    def __init__(self, space: SearchSpace, config: SearchEvalConfig, scorer: Scorer, *, num_layers: int,
                 reference: Outcomes | float, sampler: str, incumbent: Callable[[], float | None] = lambda: None,
                 plan: RungPlan | None = None):
        self.space, self.config, self.scorer = space, config, scorer
        self.num_layers, self.sampler = num_layers, sampler
        self.reference = reference_outcomes(reference, config)
        self.incumbent = incumbent
        self.plan = plan or RungPlan(1, config.fidelity.reduction)

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
        objective = self.config.objective
        plan = self.plan
        for rung in range(plan.count):
            outcomes, per_item = outcomes_of(self.scorer, coefficients, self.config.rung_stage(rung, plan), extra)
            judged = judge_trial(outcomes, self.reference, self.config)
            trial.set_user_attr("rung", rung)
            if rung == plan.top:
                break
            plausible = is_feasible(judged_constraints(judged, objective, side="lower"))
            value = objective_values(judged.safety, judged.medical, judged_constraints(judged, objective),
                                     objective, self.sampler)[0] if objective.mode == "weighted" else None
            trial.report(promotion_key(judged.safety, value, plausible, objective.mode), plan.step(rung))
            # Baselines run every rung whatever the pruner says; they still compete, so it records their value.
            if trial.should_prune() and not baseline:
                trial.set_user_attr("stopped", f"not among the best 1/{plan.reduction} of the trials that reached "
                                               f"rung {rung}")
                break
        # A trial stopped on a lower rung is judged as if on the whole pool (its standard errors × √share): the
        # sampler models the constraints the pick is made on, and fewer items must not read as less feasible.
        attrs = attrs_of(judged.projected(math.sqrt(plan.share(rung))), objective, per_item=per_item)
        values = objective_values(judged.safety, judged.medical, attrs["constraints"], objective, self.sampler)
        attrs["seconds"] = round(time.perf_counter() - started, 3)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if any(math.isnan(v) for v in values):
            raise ValueError(f"trial {trial.number}: a score is NaN ({judged.scores})")
        return values


__all__ = ["ItemScorer", "Pruned", "Scorer", "TrialObjective", "TrialScores", "attrs_of", "constraint_values",
           "constraints_of", "directions", "is_feasible", "judge_trial", "judged_constraints", "medical_drop",
           "metric_names", "objective_values", "outcomes_of", "reference_outcomes", "screening_verdict",
           "selection_key", "summarize", "violation_of"]
