"""The final pick: which trial becomes `best_recipe.yaml`, chosen so that its figures hold on items it never saw.

The trials compete on the rung pool. Picking the best of them on those very items rewards the ones the items
favoured by luck (the winner's curse: "Overtuning in Hyperparameter Optimization", arXiv 2506.19540, measures how
often a tuned choice then does worse than the default when data are few). So the pick is two-staged:

1. **Finalists**: the `selection.finalists` best searched trials that reached the last rung, by the search's own
   rule on the rung pool (every constraint met by its bound first, then safety, then medical).
2. **Re-scored** on the selection part — search items no trial was scored on — and judged again, paired with
   λ = 0, on the whole search part (rung pool and selection part together). The pick is the best finalist by the
   same rule there; the best uniform λ is chosen the same way among the uniform baselines, so both are chosen
   alike.

With `selection.share: 0` (or a scorer without per-item outcomes) the pick is the first finalist. The other
rules were measured on toy worlds (docs/search.md, "The final pick"). Pure functions over per-item outcomes plus
`boundary`, which says when the pick sits at the edge of the space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .bounds import Judged
from .config import Objective
from .objective import is_feasible, judged_constraints, objective_values, selection_key, violation_of
from .outputs import TrialRecord
from .space import Range, SearchSpace

EDGE = 0.01  # a parameter within this share of its range from a bound sits on it


def judged_key(judged: Judged, objective: Objective, sampler: str, number: int) -> tuple:
    """The search's rule on judged figures (larger is better): feasible by the bounds first, then safety, then
    medical; infeasible ones by how little they break their constraints (weighted mode: the weighted value);
    earlier trials win ties, as `TrialRecord.key`."""
    constraints = judged_constraints(judged, objective)
    value = objective_values(judged.safety, judged.medical, constraints, objective, sampler)[0]
    return (*selection_key(judged.safety, judged.medical, is_feasible(constraints), value, objective,
                           violation_of(constraints)), -number)


def finalists(candidates: Sequence[TrialRecord], objective: Objective, k: int) -> list[TrialRecord]:
    """The k best searched candidates by the search's rule on the rung pool (their recorded bounds)."""
    searched = [r for r in candidates if r.baseline is None and r.rated and r.medical_drop is not None]
    return sorted(searched, key=lambda r: r.key(objective), reverse=True)[:k]


@dataclass
class Pick:
    """The final pick and how it was made: `searched` (the pick), `uniform` (the best uniform λ, chosen alike),
    `best` (the better of those and λ = 0: best_recipe.yaml), `finalists` (trial numbers, best first by the rung
    pool), `judged` (trial number → figures on the items the pick was made on), `rule` (what those items were)."""

    searched: TrialRecord | None
    uniform: TrialRecord | None
    best: TrialRecord | None
    finalists: list[int]
    rule: str
    judged: dict[int, Judged] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        def figures(j: Judged) -> dict[str, Any]:
            return {"safety": j.safety, "medical": j.medical, "medical_drop": j.medical_drop.value,
                    "medical_drop_se": j.medical_drop.se, "medical_drop_bound": j.medical_drop_bound,
                    "over_refusal": j.over_refusal, "over_refusal_bound": j.over_refusal_bound,
                    "safety_loss": None if j.safety_loss is None else j.safety_loss.value,
                    "safety_loss_bound": j.safety_loss_bound, "items": j.items}

        return {"rule": self.rule, "trial": self.searched.number if self.searched else None,
                "best": self.best.number if self.best else None,
                "best_uniform": self.uniform.baseline if self.uniform else None, "finalists": self.finalists,
                "judged": {str(n): figures(j) for n, j in self.judged.items()}}


def rescore_set(pool: Sequence[TrialRecord], objective: Objective, k: int) -> list[TrialRecord]:
    """What the final pick scores again on the whole search part: the finalists and every baseline."""
    return [*finalists(pool, objective, k), *(r for r in pool if r.baseline and r.rated)]


def pick_on(pool: Sequence[TrialRecord], rescored: Mapping[int, Judged] | None, objective: Objective,
            sampler: str, k: int, *, rule: str = "search part") -> Pick:
    """The pick among `pool` (trials that reached the last rung, baselines included). `rescored`: trial number →
    figures on the whole search part (of `rescore_set`); None: pick on the rung pool."""
    chosen = finalists(pool, objective, k)
    uniform = [r for r in pool if r.baseline and r.baseline != "lambda0" and r.rated]
    lambda0 = [r for r in pool if r.baseline == "lambda0" and r.rated]

    def best(records: Sequence[TrialRecord]) -> TrialRecord | None:
        if rescored is None:
            return max(records, key=lambda r: r.key(objective), default=None)
        scored = [r for r in records if r.number in rescored]
        return max(scored, key=lambda r: judged_key(rescored[r.number], objective, sampler, r.number),
                   default=None)

    searched = best(chosen[:1] if rescored is None else chosen)
    best_uniform = best(uniform)
    overall = best([r for r in (searched, best_uniform, *lambda0) if r is not None])
    return Pick(searched, best_uniform, overall, [r.number for r in chosen], "rung pool" if rescored is None else rule,
                dict(rescored or {}))


def front(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The trials no other beats on safety, medical skill and over-refusal at once (as recorded, on the rung
    pool), one of each set of identical ones: where the best trial on other items can be. A trial another one
    matches or beats on all three would have to be luckier on the other items by more than that margin."""
    rated = [r for r in records if r.rated]

    def figures(r: TrialRecord) -> tuple[float, float, float]:
        return (r.safety or 0.0, r.medical or 0.0, -(r.over_refusal or 0.0))

    def beaten(r: TrialRecord) -> bool:  # an identical trial of a lower number counts as beating it
        mine = figures(r)
        return any(all(o >= m for o, m in zip(figures(x), mine, strict=True))
                   and (figures(x) != mine or x.number < r.number) for x in rated)

    return [r for r in rated if not beaten(r)]


@dataclass(frozen=True)
class Edge:
    """A parameter of the pick at a bound of its range."""

    param: str
    side: str  # "upper" | "lower"
    bound: float
    value: float
    field: str  # where to widen it in the space file
    among_finalists: int  # how many finalists sit at the same bound
    finalists: int

    def text(self, source: str) -> str:
        wider = self.bound + (abs(self.bound) or 1.0) if self.side == "upper" else self.bound - (abs(self.bound) or 1.0)
        return (f"{self.param} = {self.value:g} sits on the {self.side} bound {self.bound:g} of its range (so do "
                f"{self.among_finalists} of the {self.finalists} other finalists): the best may lie beyond it; widen "
                f"{self.field} in {source} (e.g. to {wider:g}) and search again")


def space_field(param: str) -> str:
    """The space-file field that bounds a trial parameter."""
    if param == "scale":
        return "scale"
    if param.startswith(("layer_", "block_", "point_")):
        return "depth"
    if param.startswith("group_"):
        return f"groups.{param.removeprefix('group_')}"
    return f"operator.{param}"  # an operator parameter, NAME.PARAM


def parameter_ranges(space: SearchSpace, num_layers: int) -> dict[str, Range]:
    """Every searched number of the space and its range: coefficients and operator parameters."""
    ranges = dict(space.ranges(num_layers))
    for name in space.operators():
        for key, value in space.operator_params(name).items():
            if isinstance(value, Range):
                ranges[f"{name}.{key}"] = value
    return ranges


def boundary(pick: TrialRecord | None, others: Sequence[TrialRecord], space: SearchSpace, num_layers: int
             ) -> list[Edge]:
    """The pick's parameters within EDGE of a bound of their range. A lower bound of 0 is left out: λ = 0 on a
    part is a natural end (τ left out there), not a limit of the space."""
    if pick is None:
        return []
    ranges = parameter_ranges(space, num_layers)

    def side(params: Mapping[str, Any], name: str, rng: Range) -> str | None:
        value = params.get(name)
        if not isinstance(value, int | float):
            return None
        width = rng.high - rng.low
        if value >= rng.high - EDGE * width:
            return "upper"
        if value <= rng.low + EDGE * width and rng.low != 0:
            return "lower"
        return None

    edges = []
    for name, rng in ranges.items():
        where = side(pick.params, name, rng)
        if where is None:
            continue
        same = sum(side(o.params, name, rng) == where for o in others)
        edges.append(Edge(name, where, rng.high if where == "upper" else rng.low, float(pick.params[name]),
                          f"{space_field(name)}.{'high' if where == 'upper' else 'low'}", same, len(others)))
    return edges


__all__ = ["EDGE", "Edge", "Pick", "boundary", "finalists", "front", "judged_key", "parameter_ranges", "pick_on",
           "rescore_set", "space_field"]
