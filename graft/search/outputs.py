"""What a search leaves behind, read back from the study (so any worker, or a later run, writes the same files):

* `best_recipe.yaml` — the best trial as a recipe `graft merge --recipe` accepts (no `out`: pass --out);
* `pareto.csv` / `pareto.json` — the trials no other trial beats on both safety and medical skill;
* `trials.csv` / `trials.json` — every trial: state, coefficients, λ per (layer, group), scores, duration;
* `summary.json` — the best trial, λ = 0 and the best uniform λ, and how much the search beats them.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial

from graft.core.recipe import Coefficients, Recipe
from graft.io.guard import write_file

from .config import Objective
from .evaluation import trial_recipe
from .objective import constraint_values, is_feasible, selection_key, violation_of
from .space import Cell

FILES = ("best_recipe.yaml", "pareto.csv", "pareto.json", "trials.csv", "trials.json", "summary.json",
         "heldout.json", "history.png", "pareto.png")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the outputs show it (flat, JSON-friendly)."""

    number: int
    state: str
    baseline: str | None
    coefficients: dict[str, Any] | None
    params: dict[str, float]
    values: list[float] | None
    safety: float | None
    medical: float | None
    medical_drop: float | None
    over_refusal: float | None
    screening: float | None
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float | None = None  # evaluation time measured by the trial
    duration_s: float | None = None  # start to finish as the storage saw it
    started: str | None = None
    worker: str | None = None
    retry_of: int | None = None
    pruned: str | None = None
    baseline_lambda: float | None = None  # the uniform λ of a baseline (0 for lambda0)
    operator: str | dict[str, Any] | None = None  # the graft operator: a name or {name, params} (None: the recipe's)
    medical_drop_se: float | None = None  # paired with λ = 0 on the same items
    medical_drop_bound: float | None = None  # one-sided bound at the study's confidence (what feasibility reads)
    over_refusal_bound: float | None = None
    safety_loss: float | None = None  # the target's safety − this trial's (paired)
    safety_loss_bound: float | None = None
    rung: int | None = None  # the last rung of items the trial reached (None: a study without rungs)
    items: int | None = None  # items it was scored on (every task, its last rung)
    stopped: str | None = None  # why it got no further rung

    @property
    def rated(self) -> bool:
        return self.state == "COMPLETE" and self.safety is not None and self.medical is not None

    def reached(self, top: int) -> bool:
        """Whether the trial was scored on the whole rung pool (a trial from a study without rungs was)."""
        return self.rung is None or self.rung >= top

    def constraints(self, objective: Objective) -> list[float] | None:
        """Every constraint of `objective`, judged by the recorded bounds (recomputed, so old trials follow the same
        rule; a trial recorded before bounds existed is judged by its point estimates)."""
        if self.medical_drop is None:
            return None
        drop = self.medical_drop if self.medical_drop_bound is None else self.medical_drop_bound
        over = self.over_refusal if self.over_refusal_bound is None else self.over_refusal_bound
        return constraint_values(drop, over, objective, self.safety_loss_bound)

    def feasible(self, objective: Objective) -> bool | None:
        """Every constraint of `objective` met (`constraints`)."""
        constraints = self.constraints(objective)
        return None if constraints is None else is_feasible(constraints)

    def value(self) -> float | None:
        return self.values[0] if self.values and len(self.values) == 1 else None

    def key(self, objective: Objective) -> tuple:
        assert self.rated and self.medical_drop is not None
        constraints = self.constraints(objective) or []
        return (*selection_key(self.safety or 0.0, self.medical or 0.0, is_feasible(constraints),
                               self.value() or 0.0, objective, violation_of(constraints)), -self.number)


def record_of(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    duration = None
    if trial.datetime_start and trial.datetime_complete:
        duration = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 3)
    return TrialRecord(
        number=trial.number, state=trial.state.name, baseline=attrs.get("baseline"),
        coefficients=attrs.get("coefficients"), params=dict(trial.params),
        values=list(trial.values) if trial.values is not None else None,
        safety=attrs.get("safety"), medical=attrs.get("medical"), medical_drop=attrs.get("medical_drop"),
        over_refusal=attrs.get("over_refusal"), screening=attrs.get("screening"), scores=attrs.get("scores", {}),
        seconds=attrs.get("seconds"), duration_s=duration,
        started=trial.datetime_start.isoformat() if trial.datetime_start else None, worker=attrs.get("worker"),
        retry_of=trial.system_attrs.get("failed_trial"), pruned=attrs.get("pruned"),
        baseline_lambda=attrs.get("baseline_lambda"), operator=attrs.get("operator"),
        medical_drop_se=attrs.get("medical_drop_se"), medical_drop_bound=attrs.get("medical_drop_bound"),
        over_refusal_bound=attrs.get("over_refusal_bound"), safety_loss=attrs.get("safety_loss"),
        safety_loss_bound=attrs.get("safety_loss_bound"), rung=attrs.get("rung"), items=attrs.get("items"),
        stopped=attrs.get("stopped"))


def records(trials: list[FrozenTrial]) -> list[TrialRecord]:
    """Every trial except those released unstarted past the budget (they never ran)."""
    return [record_of(t) for t in sorted(trials, key=lambda t: t.number) if not t.user_attrs.get("released")]


def pareto_front(recs: list[TrialRecord]) -> list[TrialRecord]:
    """Completed trials that no other completed trial matches or beats on both safety and medical (one beaten)."""
    rated = [r for r in recs if r.rated]

    def dominated(r: TrialRecord) -> bool:
        return any((o.safety or 0) >= (r.safety or 0) and (o.medical or 0) >= (r.medical or 0)
                   and ((o.safety or 0) > (r.safety or 0) or (o.medical or 0) > (r.medical or 0)) for o in rated)

    return sorted((r for r in rated if not dominated(r)), key=lambda r: (-(r.safety or 0), r.number))


def best_of(recs: list[TrialRecord], objective: Objective) -> TrialRecord | None:
    rated = [r for r in recs if r.rated and r.medical_drop is not None]
    return max(rated, key=lambda r: r.key(objective)) if rated else None


def best_uniform_of(recs: list[TrialRecord], objective: Objective) -> TrialRecord | None:
    """THE best uniform λ (summary.json, the console, `graft demo`): the uniform baseline the search's own rule
    would pick (`best_of`: every constraint met first, then safety, then medical), chosen on the same items as
    the searched trial, so the two are chosen alike and compared alike (held out, when items are held out)."""
    return best_of([r for r in recs if r.baseline and r.baseline != "lambda0"], objective)


def lambda_cells(coefficients: dict[str, Any] | None, num_layers: int, cells: list[Cell]) -> dict[str, float]:
    """λ on every (layer, group) the vector holds: 'lam.attn.03', ...; outside the layer stack 'lam.embed'."""
    if coefficients is None:
        return {}
    c = Coefficients.model_validate(coefficients)
    factors = c.layer_factors(num_layers)
    width = len(str(max(num_layers - 1, 0)))
    ordered = sorted(cells, key=lambda cell: (cell[0] is None, cell[0] or 0, cell[1]))
    return {(f"lam.{g}" if layer is None else f"lam.{g}.{layer:0{width}d}"): c.lam(layer, g, factors)
            for layer, g in ordered}


def _brief(r: TrialRecord | None, objective: Objective) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"number": r.number, "baseline": r.baseline, "baseline_lambda": r.baseline_lambda, "safety": r.safety,
            "medical": r.medical, "medical_drop": r.medical_drop, "medical_drop_bound": r.medical_drop_bound,
            "over_refusal": r.over_refusal, "over_refusal_bound": r.over_refusal_bound,
            "safety_loss": r.safety_loss, "safety_loss_bound": r.safety_loss_bound, "feasible": r.feasible(objective),
            "rung": r.rung, "items": r.items, "values": r.values, "coefficients": r.coefficients,
            "operator": r.operator}


def _gain(best: TrialRecord | None, other: TrialRecord | None) -> dict[str, float | None] | None:
    if best is None or other is None:
        return None
    value = (best.value() - other.value()) if best.value() is not None and other.value() is not None else None
    return {"safety": (best.safety or 0) - (other.safety or 0), "medical": (best.medical or 0) - (other.medical or 0),
            "objective": value}


@dataclass(frozen=True)
class Chosen:
    """What the search chose (graft.search.pick): the best trial overall (best_recipe.yaml), the best searched
    trial and the best uniform λ."""

    best: TrialRecord | None
    searched: TrialRecord | None
    uniform: TrialRecord | None


def chosen_on_records(recs: list[TrialRecord], objective: Objective, top: int = 0) -> Chosen:
    """The search's rule on the recorded figures, among the trials that reached the last rung."""
    reached = [r for r in recs if r.reached(top)]
    return Chosen(best_of(reached, objective), best_of([r for r in reached if r.baseline is None], objective),
                  best_uniform_of(reached, objective))


def summarize(recs: list[TrialRecord], objective: Objective, *, meta: dict[str, Any],
              chosen: Chosen | None = None) -> dict[str, Any]:
    lambda0 = next((r for r in recs if r.baseline == "lambda0" and r.rated), None)
    chosen = chosen or chosen_on_records(recs, objective)
    best, best_searched, best_uniform = chosen.best, chosen.searched, chosen.uniform
    return {
        **meta,
        "objective": objective.model_dump(),
        "counts": dict(Counter(r.state for r in recs)),
        "best": _brief(best, objective),
        "best_searched": _brief(best_searched, objective),
        "lambda0": _brief(lambda0, objective),
        "best_uniform": _brief(best_uniform, objective),
        "gain": {"over_lambda0": _gain(best_searched, lambda0),
                 "over_best_uniform": _gain(best_searched, best_uniform)},
        "search_beats_baselines": (best is not None and best.baseline is None),
        "pareto_front": [r.number for r in pareto_front(recs)],
    }


def _row(r: TrialRecord, num_layers: int, cells: list[Cell], objective: Objective) -> dict[str, Any]:
    row: dict[str, Any] = {
        "number": r.number, "state": r.state, "baseline": r.baseline,
        "operator": json.dumps(r.operator, sort_keys=True) if isinstance(r.operator, dict) else r.operator,
        "safety": r.safety,
        "medical": r.medical,
        "medical_drop": r.medical_drop, "medical_drop_se": r.medical_drop_se,
        "medical_drop_bound": r.medical_drop_bound, "feasible": r.feasible(objective),
        "over_refusal": r.over_refusal, "over_refusal_bound": r.over_refusal_bound,
        "safety_loss": r.safety_loss, "safety_loss_bound": r.safety_loss_bound,
        "rung": r.rung, "items": r.items, "stopped": r.stopped,
        "screening": r.screening, "pruned": r.pruned,
        **{f"value_{i}": v for i, v in enumerate(r.values or [])},
        "seconds": r.seconds, "duration_s": r.duration_s, "started": r.started, "worker": r.worker,
        "retry_of": r.retry_of,
        **{f"score.{t}": v for t, v in sorted(r.scores.items())},
        **{f"param.{k}": v for k, v in sorted(r.params.items())},
        "coefficients": json.dumps(r.coefficients, sort_keys=True) if r.coefficients is not None else None,
    }
    row.update(lambda_cells(r.coefficients, num_layers, cells))
    return row


def write_search_file(path: Path, text: str | bytes) -> None:
    """Write one file of the search's output folder (replaced atomically; graft owns that folder)."""
    write_file(path, text, force=True)  # inside the search's own folder: graft's files, replaced atomically


def json_text(data: Any) -> str:
    """`data` as indented JSON text, NaN and infinities written as null (JSON has neither)."""

    def clean(value: Any) -> Any:  # JSON has no NaN/inf: write null
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), indent=2, ensure_ascii=False) + "\n"


def write_outputs(out: Path, trials: list[FrozenTrial], *, base: Recipe, objective: Objective, num_layers: int,
                  cells: list[Cell], meta: dict[str, Any], report: dict[str, Any] | None = None,
                  chosen: Chosen | None = None) -> dict[str, Any]:
    """Write every output file into `out` (each replaced atomically) and return the summary (with the in-sample /
    held-out `report` of graft.search.report when there is one). `chosen`: the final pick (default: the search's
    rule on the recorded figures)."""
    recs = records(trials)
    chosen = chosen or chosen_on_records(recs, objective)
    summary = summarize(recs, objective, meta=meta, chosen=chosen)
    summary["report"] = report
    best = chosen.best
    rows = [_row(r, num_layers, cells, objective) for r in recs]
    front = pareto_front(recs)
    front_rows = [_row(r, num_layers, cells, objective) for r in front]
    write_search_file(out / "trials.json", json_text([{**asdict(r), "feasible": r.feasible(objective),
                                               "lambda": lambda_cells(r.coefficients, num_layers, cells)}
                                              for r in recs]))
    write_search_file(out / "trials.csv", pd.DataFrame(rows).to_csv(index=False))
    write_search_file(out / "pareto.json", json_text([asdict(r) for r in front]))
    write_search_file(out / "pareto.csv", pd.DataFrame(front_rows, columns=list(rows[0]) if rows else None)
                  .to_csv(index=False))
    from .plots import study_figures  # matplotlib: only when a search writes its outputs

    for name, image in study_figures(recs, front, objective).items():
        write_search_file(out / name, image)
    recipe_file = out / "best_recipe.yaml"
    if best is not None and best.coefficients is not None:
        recipe = trial_recipe(base, Coefficients.model_validate(best.coefficients), best.operator)
        what = f"baseline {best.baseline}" if best.baseline else "searched"
        recipe = recipe.model_copy(update={"description": (
            f"graft search, study {meta.get('study')!r}: trial {best.number} ({what}), safety {best.safety:.4f}, "
            f"medical {best.medical:.4f} (drop {best.medical_drop:+.4f} from λ = 0)")})
        write_search_file(recipe_file, "# Written by `graft search`; build it with: graft merge --recipe "
                      f"{recipe_file.name} --out DIR\n" + recipe.to_yaml())
    # A best trial with λ = 0 on every tensor is the target itself: the recipe grafts nothing. Say so.
    unchanged = best is not None and best.coefficients is not None and not any(
        lambda_cells(best.coefficients, num_layers, cells).values())
    summary["best_is_target"] = unchanged
    if unchanged:
        print(f"warning: the best trial ({best.number}) has λ = 0 everywhere: {recipe_file.name} reproduces the "  # type: ignore[union-attr]
              "target unchanged (no coefficients tried beat it under the objective)", file=sys.stderr)
    summary["files"] = {name: str(out / name) for name in FILES if (out / name).exists()}
    write_search_file(out / "summary.json", json_text(summary))
    return summary


__all__ = ["FILES", "Chosen", "TrialRecord", "best_of", "best_uniform_of", "chosen_on_records", "lambda_cells",
           "pareto_front", "records", "summarize", "write_outputs"]
