"""λ per (layer, group) for a recipe or a set of coefficients, by the very rule `graft merge` applies.

A tensor's λ is `Coefficients.lam(layer, group, layer_factors)` when the recipe's include/exclude rules select it
and 0 otherwise, which is what `graft.engines.plan.build_plan` assigns, over the tensors of the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from graft.core.mapping import Group
from graft.core.recipe import Coefficients, Recipe
from graft.engines.merge import close_plan, open_plan
from graft.engines.plan import GraftPlan
from graft.errors import UsageError
from graft.io.vector_folder import SafetyVector

from .scores import cell_order

LAMBDA_COLUMNS = ["layer", "group", "n_tensors", "lam", "n_grafted"]


@dataclass(frozen=True)
class _Placed:
    name: str  # the name include/exclude rules are matched against
    layer: int | None
    group: Group


def lambdas(
    recipe_or_coefficients: Recipe | Coefficients, plan: GraftPlan | SafetyVector | str | Path | None = None,
) -> pd.DataFrame:
    """One row per (layer, group): n_tensors, lam (the cell's λ; the mean when include/exclude rules leave some of
    its tensors at 0), n_grafted (tensors with λ ≠ 0).

    `plan` places the tensors: a `GraftPlan` (target names, as merged), or a vector (folder or `SafetyVector`) whose
    manifest names stand in for the target's (include/exclude rules are then matched against the vector's names).
    Without one, a recipe's own target and vector are planned exactly as `graft merge` would.
    """
    if isinstance(recipe_or_coefficients, Recipe):
        coefficients, selects = recipe_or_coefficients.coefficients, recipe_or_coefficients.mapping.selects
    else:
        coefficients, selects = recipe_or_coefficients, None
    if plan is None:
        if not isinstance(recipe_or_coefficients, Recipe) or not recipe_or_coefficients.vector:
            raise UsageError("λ needs the tensors it applies to: pass a plan or a vector (or a recipe with a vector)")
        recipe = recipe_or_coefficients
        if recipe.target:
            opened = open_plan(recipe)
            try:
                return lambda_table(coefficients, *_placed_by_plan(opened), selects)
            finally:
                close_plan(opened)
        plan = recipe.vector
    if isinstance(plan, GraftPlan):
        return lambda_table(coefficients, *_placed_by_plan(plan), selects)
    vector = plan if isinstance(plan, SafetyVector) else SafetyVector.open(plan)
    try:
        placed = [_Placed(name, t.layer, t.group) for name, t in vector.manifest.tensors.items()]
        return lambda_table(coefficients, placed, vector.manifest.num_layers, selects)
    finally:
        if vector is not plan:
            vector.close()


def _placed_by_plan(plan: GraftPlan) -> tuple[list[_Placed], int]:
    placed = [_Placed(a.target, a.layer, a.group) for a in plan.actions if a.donor is not None and a.group is not None]
    return placed, plan.vector.manifest.num_layers


def lambda_table(coefficients: Coefficients, placed: list[_Placed], num_layers: int, selects=None) -> pd.DataFrame:
    factors = coefficients.layer_factors(num_layers)
    cells: dict[tuple[int | None, Group], list[float]] = {}
    for p in placed:
        lam = coefficients.lam(p.layer, p.group, factors) if selects is None or selects(p.name) else 0.0
        cells.setdefault((p.layer, p.group), []).append(lam)
    rows = [{"layer": layer, "group": group, "n_tensors": len(lams), "lam": sum(lams) / len(lams),
             "n_grafted": sum(1 for x in lams if x != 0.0)}
            for (layer, group), lams in sorted(cells.items(), key=lambda item: cell_order(*item[0]))]
    table = pd.DataFrame(rows, columns=LAMBDA_COLUMNS)
    table["layer"] = table["layer"].astype("Int64")
    return table
