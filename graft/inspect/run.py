"""`inspect_vector`: everything `graft inspect` computes, as one call that returns DataFrames (and, with `out`,
writes the report folder). The command prints from what this returns; a notebook uses it the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import InputError, UsageError
from graft.flag_ranges import INSPECT, check
from graft.io.hub import pin

if TYPE_CHECKING:
    import pandas as pd

    from .report import InspectReport
    from .study import StudyChoice


@dataclass(frozen=True)
class Inspection:
    """Scores of τ per layer × group and per tensor, the λ in force (if a recipe or study gave one), the study's
    parameter importances, what they came from, and the report folder if one was written."""

    scores: pd.DataFrame
    tensors: pd.DataFrame
    lambdas: pd.DataFrame | None
    importance: pd.DataFrame | None
    choice: StudyChoice | None
    sources: dict[str, Any]
    report: InspectReport | None
    with_target: bool

    def table(self) -> pd.DataFrame:
        """Scores and λ side by side (with update_ratio = |λ|·‖τ‖/‖θ‖ when both are known)."""
        from .report import combine

        return combine(self.scores, self.lambdas)


def inspect_vector(
    vector: str | Path | None = None,
    *,
    target: str | Path | None = None,
    origin: str | Path | None = None,
    recipe: str | Path | None = None,
    map: list[str] | None = None,
    study: str | None = None,
    storage: str | None = None,
    trial: int | None = None,
    out: str | Path | None = None,
    safelora: bool = True,
    device: str = "auto",
    chunk_size: str | None = None,
    force: bool = False,
    on_warning: Callable[[str], None] | None = None,
    on_tensor: Callable[[int, int], None] | None = None,
) -> Inspection:
    """Score τ per layer × group against the target (and its origin), with the λ of a recipe or study trial.
    `on_tensor(done, total)` follows the scoring, tensor by tensor (what `graft inspect`'s progress shows).

    Example::

        import graft
        found = graft.inspect_vector("vector", target="med-model", origin="med-base")
        found.table().sort_values("ratio", ascending=False).head()
    """
    from graft.core.recipe_flags import RecipeFlags
    from graft.io.vector_folder import SafetyVector

    from .recipe_lambdas import lambdas
    from .report import check_report_destination, write_report
    from .scores import layer_table, score_tensors, tensor_table
    from .study import choice_of, importance_of, open_study

    check(INSPECT, trial=trial)
    recipe_path = Path(recipe) if recipe is not None else None
    spec = RecipeFlags(recipe_file=recipe_path, target=_text(target), vector=_text(vector), origin=_text(origin),
                       map=map).to_recipe()
    if (study is not None or trial is not None) and storage is None:
        raise UsageError("--study/--trial need --storage, the study's optuna storage (e.g. sqlite:///search.db)")
    opened_study = open_study(storage, study) if storage is not None else None
    choice = choice_of(opened_study, trial) if opened_study is not None else None
    if choice is not None and not spec.vector and choice.vector:  # a `graft search` study names what it searched
        spec = spec.model_copy(update={"vector": choice.vector, "target": spec.target or choice.target})
    if not spec.vector:
        raise UsageError("--vector is required (or a --recipe or `graft search` study that names a vector)")
    inputs = [p for p in (spec.vector, spec.target, spec.options.origin) if p and Path(p).exists()]
    if out is not None:  # an --out that cannot be written is refused now, not after the scoring
        check_report_destination(out, inputs, force=force)
    stats = score_tensors(spec.vector, spec.target, spec.options.origin, spec.mapping, device=device,
                          chunk_size=chunk_size, safelora=safelora, on_tensor=on_tensor)
    scores, tensors = layer_table(stats), tensor_table(stats)

    lam_table = importance = None
    no_importance = None
    if choice is not None:
        lam_recipe = spec.model_copy(update={"coefficients": choice.coefficients})
        opened = SafetyVector.open(spec.vector)
        num_layers = opened.manifest.num_layers
        opened.close()
        try:
            importance = importance_of(opened_study, num_layers=num_layers)
        except InputError as exc:  # e.g. flat scores (zero total variance): the rest of the report still holds
            no_importance = str(exc)
            if on_warning:
                on_warning(f"no parameter importances in the report: {exc}")
    else:
        lam_recipe = spec if recipe_path is not None else None
    if lam_recipe is not None:
        lam_table = lambdas(lam_recipe)  # planned as `graft merge --recipe` would (vector names without a target)

    # Local paths absolute (graft.io.hub.pin), so `graft recipe --from-scores` finds them from any folder.
    sources: dict[str, Any] = {"vector": pin(spec.vector), "target": pin(spec.target),
                               "origin": pin(spec.options.origin),
                               "recipe": str(Path(recipe_path).resolve()) if recipe_path else None}
    if choice is not None:
        sources.update(storage=storage, study=choice.study, trial=choice.trial, trial_chosen_as=choice.reason,
                       coefficients=choice.coefficients.model_dump(mode="json"))
        if no_importance:
            sources["importance"] = f"not computed: {no_importance}"
    elif lam_recipe is not None:
        sources["coefficients"] = lam_recipe.coefficients.model_dump(mode="json")
    report = None
    if out is not None:
        report = write_report(out, scores=scores, lambdas=lam_table, tensors=tensors, importance=importance,
                              sources=sources, inputs=inputs, force=force)
    return Inspection(scores, tensors, lam_table, importance, choice, sources, report, spec.target is not None)


def _text(value: str | Path | None) -> str | None:
    return None if value is None else str(value)
