"""What a search tells its user beyond the figures: a medical constraint finer than the items can resolve, a
target that breaks a cap itself, a pick less safe than the target, no feasible trial, a pick on the edge of its
space. Each is one plain line, printed as a warning when it is found (so also with -q) and kept in summary.json's
`warnings` (and `boundary`), so a script sees what the console said.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .bounds import Judged, z_of
from .config import SearchEvalConfig
from .fidelity import RungPlan
from .objective import is_feasible, judged_constraints
from .outputs import TrialRecord
from .pick import Edge, Pick, boundary
from .space import SearchSpace


@dataclass
class Notes:
    """The warnings of one search, in the order found."""

    lines: list[str] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def warn(self, text: str) -> None:
        if text in self.lines:
            return
        self.lines.append(text)
        print(f"warning: {text}", file=sys.stderr)


def delta_resolution(config: SearchEvalConfig, pool: Mapping[str, int] | None, plan: RungPlan) -> dict[str, Any] | None:
    """δ in items of the rung pool, and whether the pool can resolve it: the bound of a trial that loses one item
    of the largest medical task (and changes nothing else) is the smallest drop a trial can show; when it is above
    δ, only trials that lose no medical item at all can pass. None outside constrained mode or without counts."""
    objective = config.objective
    if objective.mode != "constrained" or pool is None:
        return None
    sizes = {t: pool.get(t, 0) for t in config.medical if pool.get(t, 0) > 0}
    if not sizes:
        return None
    tasks = len(sizes)
    largest = max(sizes, key=lambda t: (sizes[t], t))
    n = sizes[largest]
    step = 1.0 / (tasks * n)  # one item of the largest task moves the medical score by this much
    z = z_of(objective.confidence)
    se = math.sqrt((1.0 / n) * (1.0 - 1.0 / n) / n) / tasks
    one_item = step + z * se
    delta = objective.max_medical_drop
    below = delta < one_item - 1e-12
    out: dict[str, Any] = {
        "value": delta, "items": delta / step, "per_item": step, "medical_items": sum(sizes.values()),
        "largest_task": largest, "one_item_bound": one_item, "confidence": objective.confidence,
        "below_resolution": below, "warning": None,
        "refusals_allowed": refusals_allowed(config, pool, z), "over_refusal_warning": None,
    }
    blind = [task for task, (k, _) in (out["refusals_allowed"] or {}).items() if k == 0]
    if blind:
        task = blind[0]
        n = out["refusals_allowed"][task][1]
        out["over_refusal_warning"] = (
            f"ρ = {objective.max_over_refusal:g} is below what the rung pool resolves on {', '.join(blind)}: with "
            f"{n} items of {task}, a trial that refuses a single one more than the target has an over-refusal bound "
            f"above ρ at confidence {objective.confidence:g}, so only trials that refuse none pass; add benign "
            "items, raise ρ (--max-over-refusal) or lower objective.confidence")
    if below:
        out["warning"] = (
            f"δ = {delta:.4g} of the medical score ({delta / step:.1f} items' worth) is below what the rung pool "
            f"resolves: with {sum(sizes.values())} medical items ({tasks} task(s), {n} of {largest}), a trial that "
            f"loses a single item has a drop bound of {one_item:.4f} at confidence {objective.confidence:g}, so "
            "only trials that lose no medical item pass; add items (limit/limits, larger benchmarks), raise δ "
            "(--max-medical-drop) or lower objective.confidence")
    return out


def refusals_allowed(config: SearchEvalConfig, pool: Mapping[str, int], z: float) -> dict[str, list[int]] | None:
    """Per benign task: [items a trial may refuse and still pass the over-refusal bound, when the target refuses
    none; items in the rung pool] (the cap ρ in items)."""
    rho = config.objective.max_over_refusal
    if rho is None:
        return None
    out = {}
    for task in config.benign_tasks():
        n = pool.get(task, 0)
        if not n:
            continue
        k = 0
        while k < n and (k + 1) / n + z * math.sqrt((k + 1) / n * (1 - (k + 1) / n) / n) <= rho + 1e-12:
            k += 1
        out[task] = [k, n]
    return out


def target_breaks_a_cap(judged: Judged, config: SearchEvalConfig) -> str | None:
    """The λ = 0 warning: the target itself breaks a constraint (the over-refusal cap: its drop is 0 by
    definition), so every feasible recipe must move away from it, possibly trading safety for the cap."""
    objective = config.objective
    if objective.mode != "constrained":
        return None
    constraints = judged_constraints(judged, objective)
    if is_feasible(constraints) or objective.max_over_refusal is None or judged.over_refusal is None:
        return None
    if judged.over_refusal <= objective.max_over_refusal:
        return None
    return (f"the target itself (λ = 0) refuses {100 * judged.over_refusal:.1f} % of benign prompts on the "
            f"search's items, over the cap ρ = {objective.max_over_refusal:g}: every feasible recipe must refuse "
            "less than the target does, and the search may trade safety away to get there; relax the cap "
            f"(--max-over-refusal above {judged.over_refusal:.2f}) or keep safety at least at the target's level "
            "(--keep-target-safety, objective.keep_target_safety: true)")


def _held_out_safety(report: Mapping[str, Any] | None, label: str) -> float | None:
    model = ((report or {}).get("models") or {}).get(label) or {}
    est = (model.get("held_out") or {}).get("safety")
    return None if not est else est.get("value")


def closing_warnings(notes: Notes, records: Sequence[TrialRecord], pick: Pick | None, report: Mapping[str, Any] | None,
                     space: SearchSpace, num_layers: int, config: SearchEvalConfig, source: str) -> None:
    """The warnings about the result: no feasible trial, a pick less safe than the target (on the items it was
    chosen on, or held out), a pick on the edge of the space."""
    objective = config.objective
    searched = pick.searched if pick else None
    lambda0 = next((r for r in records if r.baseline == "lambda0" and r.rated), None)
    if searched is None:
        return
    judged = pick.judged.get(searched.number) if pick else None
    if objective.mode == "constrained":
        feasible = is_feasible(judged_constraints(judged, objective)) if judged else searched.feasible(objective)
        if not feasible:
            notes.warn(f"no searched trial met every constraint (judged by its bound at confidence "
                       f"{objective.confidence:g}): trial {searched.number}, the chosen one, breaks one; read its "
                       "figures as what the space reaches, not as a recipe that keeps the caps")
    in_sample_loss = judged.safety_loss.value if judged and judged.safety_loss else (
        (lambda0.safety or 0.0) - (searched.safety or 0.0) if lambda0 else None)
    held_searched, held_target = _held_out_safety(report, "searched"), _held_out_safety(report, "lambda0")
    held_loss = held_target - held_searched if held_searched is not None and held_target is not None else None
    where = [f"{100 * loss:.1f} points {label}" for loss, label in ((in_sample_loss, "on the items it was chosen on"),
                                                                    (held_loss, "held out")) if loss and loss > 1e-12]
    if where:
        notes.warn(f"the chosen recipe (trial {searched.number}) is LESS SAFE than the target itself: it loses "
                   f"{' and '.join(where)} of safety; it is not a safety graft. Relax the over-refusal cap or keep "
                   "safety at least at the target's level (--keep-target-safety)")
    others = [r for r in records if pick and r.number in pick.finalists and r.number != searched.number]
    for edge in boundary(searched, others, space, num_layers):
        notes.edges.append(edge)
        notes.warn(edge.text(source))


__all__ = ["Notes", "closing_warnings", "delta_resolution", "target_breaks_a_cap"]
