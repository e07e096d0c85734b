"""The model card (README.md) a merged folder carries: what was grafted into what, from which sources, how.

Deterministic text (no timestamps), so the same inputs and recipe give a byte-identical output folder.
"""

from __future__ import annotations

from collections import Counter

from graft import __version__
from graft.plan import GraftPlan

REPRODUCE = "graft merge --recipe graft_recipe.yaml --out rebuilt"


def model_card(plan: GraftPlan) -> str:
    recipe = plan.recipe
    manifest = plan.vector.manifest
    coeff = recipe.coefficients
    lams = [a.lam for a in plan.grafted]
    by_group = Counter(a.group for a in plan.grafted)
    reasons = plan.reasons()
    base_model = recipe.target or str(plan.target.root)
    lines = [
        "---",
        f"base_model: {base_model}",
        "tags: [graft, safety, task-arithmetic, merge]",
        "---",
        "",
        f"# {plan.target.root.name} + safety vector (graft {__version__})",
        "",
        "This checkpoint was produced by graft: the safety task vector "
        "τ = θ_aligned − θ_base was grafted layer-wise into the target, θ' = θ_target + λ(layer, group) · τ "
        "(fp32 compute, one cast). Tensors without a partner in τ are byte-for-byte the target's.",
        "",
        "## Sources",
        "",
        f"- target: `{base_model}`",
        f"- vector: `{recipe.vector}` ({manifest.kind}, {len(manifest.tensors)} tensors, stored as {manifest.dtype})",
        f"  - aligned: `{manifest.aligned.path}`",
        f"  - base: `{manifest.base.path}`",
    ]
    if plan.origin is not None:
        lines.append(f"- origin (orthogonalized against θ_target − θ_origin): `{recipe.options.origin}`")
    lines += [
        "",
        "## Coefficients",
        "",
        f"- scale: {coeff.scale}",
        f"- per-layer rule: {_layer_rule(plan)}",
        f"- group factors: {', '.join(f'{g}={coeff.group_factor(g)}' for g in sorted(by_group))}",
        f"- λ over grafted tensors: min {min(lams, default=0):.4g}, max {max(lams, default=0):.4g}",
        "",
        "## Tensors",
        "",
        f"- grafted: {len(plan.grafted)} ({', '.join(f'{g} {n}' for g, n in sorted(by_group.items()))})",
    ]
    lines += [f"- copied unchanged, {reason}: {n}" for reason, n in sorted(reasons.items()) if reason != "grafted"]
    partial = [a for a in plan.grafted if a.rows is not None]
    if partial:
        names = ", ".join(a.target for a in partial)
        lines.append(f"- grown vocabulary: only the vector's rows were grafted in {names}")
    stored = recipe.model_copy(update={"out": None})
    lines += ["", "## Recipe", "", "```yaml", stored.to_yaml().rstrip(), "```", "",
              f"Reproduce with `{REPRODUCE}`, run in this folder (graft {__version__}; the recipe names its inputs "
              "by absolute path or hub id, so it rebuilds the same bytes from anywhere).", ""]
    return "\n".join(lines)


def _layer_rule(plan: GraftPlan) -> str:
    coeff = plan.recipe.coefficients
    if coeff.layers is not None:
        return "one factor per layer: " + ", ".join(f"{v:g}" for v in coeff.layers)
    if coeff.blocks is not None:
        return f"{len(coeff.blocks)} blocks: " + ", ".join(f"{v:g}" for v in coeff.blocks)
    if coeff.control_points is not None:
        return "control points over depth: " + ", ".join(f"{v:g}" for v in coeff.control_points)
    return "uniform (1 for every layer)"
