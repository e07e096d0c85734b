"""Human and machine views of a graft plan: rich tables for the terminal, a plain dict for JSON and CI."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table
from rich.text import Text

from graft.display import console_text, shown
from graft.engines.plan import GraftPlan


def plan_as_dict(plan: GraftPlan) -> dict[str, object]:
    return {
        "target": str(plan.target.root),
        "vector": str(plan.vector.root),
        "backbone": {"vector_prefix": plan.match.donor_prefix, "target_prefix": plan.match.target_prefix},
        "num_layers": len(plan.layer_factors),
        "layer_factors": plan.layer_factors,
        "operator": plan.recipe.operator_spec.to_data(),
        "counts": dict(plan.reasons()),
        "tensors": [
            {"target": a.target, "action": "graft" if a.graft else "copy", "reason": a.reason, "vector": a.donor,
             "lambda": a.lam, "layer": a.layer, "group": a.group, "rows": a.rows, "origin": a.origin}
            for a in plan.actions
        ],
        "unmatched_vector_tensors": list(plan.unmatched_donor),
        "warnings": plan.warnings(),
        "problems": plan.problems(),
    }


def print_plan_summary(plan: GraftPlan, console: Console) -> None:
    rows: list[tuple[str, str]] = [
        ("target", f"{shown(plan.target.root)}  (backbone prefix '{plan.match.target_prefix}')"),
        ("vector", f"{shown(plan.vector.root)}  (backbone prefix '{plan.match.donor_prefix}', "
                   f"{len(plan.layer_factors)} layers)"),
        ("f(τ)", plan.recipe.operator_spec.describe()),  # the operator: θ + λ·f(τ)
    ]
    grafted = plan.grafted
    by_group = Counter(a.group for a in grafted)
    rows.append(("grafted", f"{len(grafted)} tensors: " + ", ".join(f"{g} {n}" for g, n in sorted(by_group.items()))))
    rows += [("copied", f"{n} tensors: {reason}") for reason, n in sorted(plan.reasons().items())
             if reason != "grafted"]
    if grafted:
        lams = [a.lam for a in grafted]
        rows.append(("λ", f"min {min(lams):.4g}, max {max(lams):.4g}"))
    for a in grafted:
        if a.rows is not None:
            total = plan.target.tensors[a.target].rows
            rows.append(("grown vocabulary", f"{a.target}: rows 0..{a.rows - 1} grafted, {total - a.rows} new rows "
                                             "pass through unchanged"))
    if plan.unmatched_donor:
        names = ", ".join(plan.unmatched_donor[:6])
        more = f" (+{len(plan.unmatched_donor) - 6} more)" if len(plan.unmatched_donor) > 6 else ""
        rows.append(("vector tensors with no target", f"{names}{more}"))
    table = Table(title="graft plan", show_header=False)
    for label, value in rows:  # names come from the checkpoints' headers: printable, never read as markup
        table.add_row(label, console_text(value))
    console.print(table)


def print_plan(plan: GraftPlan, console: Console, *, list_all: bool = False) -> None:
    print_plan_summary(plan, console)
    if list_all:
        table = Table(title="tensors")
        for column in ("target tensor", "action", "λ", "layer", "group", "vector tensor"):
            table.add_column(column)
        for a in plan.actions:
            table.add_row(*map(console_text, (a.target, "graft" if a.graft else f"copy ({a.reason})",
                                              f"{a.lam:.4g}" if a.graft else "", "" if a.layer is None else a.layer,
                                              a.group or "", a.donor or "")))
        console.print(table)
    for note in plan.warnings():
        console.print(Text.assemble(("warning:", "bold yellow"), " ", console_text(note)), soft_wrap=True)
    for problem in plan.problems():
        console.print(Text.assemble(("problem:", "bold red"), " ", console_text(problem)), soft_wrap=True)
