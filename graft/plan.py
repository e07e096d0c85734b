"""The graft plan: for every target tensor, graft (with which donor tensor and which λ) or copy (and why).

Computed from headers, the vector manifest and the recipe only, before a byte of weights is read. `graft plan`
prints it, `graft merge` executes it, and the search will set resident weights from it, so the three can never
disagree on which tensor gets which λ.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from graft.checkpoint import Checkpoint
from graft.errors import IncompatibleError
from graft.mapping import Group, Mismatch, NameMatch, match_names, module_group
from graft.recipe import Recipe
from graft.vector import SafetyVector

Reason = Literal["grafted", "no partner in the vector", "vision tower / projector", "excluded by rule", "λ = 0"]


@dataclass(frozen=True)
class TensorAction:
    target: str
    graft: bool
    reason: Reason
    donor: str | None = None
    lam: float = 0.0
    layer: int | None = None
    group: Group | None = None
    rows: int | None = None  # grafted rows when fewer than the tensor's (a grown vocabulary); None = all
    origin: str | None = None  # origin tensor for the orthogonal variant


@dataclass
class GraftPlan:
    target: Checkpoint
    vector: SafetyVector
    recipe: Recipe
    match: NameMatch
    actions: list[TensorAction]
    layer_factors: list[float]
    mismatches: list[Mismatch] = field(default_factory=list)
    origin: Checkpoint | None = None

    @property
    def grafted(self) -> list[TensorAction]:
        return [a for a in self.actions if a.graft]

    @property
    def copied(self) -> list[TensorAction]:
        return [a for a in self.actions if not a.graft]

    @property
    def unmatched_donor(self) -> tuple[str, ...]:
        return self.match.unmatched_donor

    def reasons(self) -> Counter[str]:
        return Counter(a.reason for a in self.actions)

    def problems(self) -> list[str]:
        """Everything that makes the plan unusable; empty when `graft merge` may proceed."""
        problems = [
            f"shape mismatch: vector {m.donor} {list(m.donor_shape)} vs target {m.target} {list(m.target_shape)}"
            for m in self.mismatches
        ]
        # All λ = 0 is a valid plan (a copy of the target: the search's first baseline); no partner at all is not.
        if not any(a.donor for a in self.actions) and not problems:
            problems.append(
                f"no tensor of the vector matched a tensor of {self.target.root} "
                "(add mapping rules with --map, or check that this is the right vector)"
            )
        return problems

    def warnings(self) -> list[str]:
        """Things that do not stop a merge but deserve a look."""
        notes = []
        donor_family = self.vector.manifest.base.model_type or ""
        config = self.target.config
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        target_family = str(text.get("model_type") or config.get("model_type") or "")  # type: ignore[union-attr]
        if donor_family and target_family and donor_family not in target_family and target_family not in donor_family:
            notes.append(f"the vector comes from {donor_family} models but the target's language model is "
                         f"{target_family}; check that this is the right vector")
        if self.unmatched_donor:
            notes.append(f"{len(self.unmatched_donor)} vector tensors have no partner in the target "
                         "(e.g. a tied lm_head); they are not grafted")
        return notes

    def check(self) -> None:
        problems = self.problems()
        if problems:
            more = f" (+{len(problems) - 1} more; run `graft plan` for the list)" if len(problems) > 1 else ""
            raise IncompatibleError(problems[0] + more)


def build_plan(target: Checkpoint, vector: SafetyVector, recipe: Recipe, origin: Checkpoint | None = None) -> GraftPlan:
    target_shapes = {name: info.shape for name, info in target.tensors.items()}
    rules = [rule.to_rule() for rule in recipe.mapping.rules]
    match = match_names(vector.shapes, target_shapes, rules)
    layer_factors = recipe.coefficients.layer_factors(vector.manifest.num_layers)
    origin_of = _origin_names(origin, target_shapes) if origin is not None else {}
    selected = recipe.mapping.selects
    pairs = match.by_target()

    actions = []
    for name in target.tensors:
        pair = pairs.get(name)
        if pair is None:
            vision = module_group(name) == "vision"
            reason: Reason = "vision tower / projector" if vision else "no partner in the vector"
            actions.append(TensorAction(name, False, reason))
            continue
        common = dict(donor=pair.donor, layer=pair.layer, group=pair.group, rows=pair.rows)
        lam = recipe.coefficients.lam(pair.layer, pair.group, layer_factors)
        if not selected(name):
            actions.append(TensorAction(name, False, "excluded by rule", **common))
        elif lam == 0.0:
            actions.append(TensorAction(name, False, "λ = 0", **common))
        else:
            origin_name = origin_of.get(name) if origin is not None else None
            if origin is not None and origin_name is None:
                raise IncompatibleError(
                    f"{origin.root}: the origin has no tensor matching target {name!r}; "
                    "it must be the model the target was fine-tuned from"
                )
            actions.append(TensorAction(name, True, "grafted", lam=lam, origin=origin_name, **common))
    mismatches = [m for m in match.mismatches if selected(m.target)]
    return GraftPlan(target, vector, recipe, match, actions, layer_factors, mismatches, origin)


def _origin_names(origin: Checkpoint, target_shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Target name -> origin name. The origin may be a text LLM or share the target's layout: same matcher."""
    origin_match = match_names({n: i.shape for n, i in origin.tensors.items()}, target_shapes)
    return {pair.target: pair.donor for pair in origin_match.pairs}
