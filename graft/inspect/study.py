"""Read what a `graft search` study says about λ: the chosen trial's coefficients and the parameter importances.

Contract with `graft search`: every trial carries the user attributes ``coefficients`` (a
`Coefficients.model_dump(mode="json")`), ``safety`` and ``medical``, and the study its metadata (objective, vector,
target). The chosen trial is the one named with `trial=N`; else, for a `graft search` study, the one its
best_recipe.yaml holds (the search's own selection rule, so the two never disagree); else, for any other study,
`study.best_trial` (one objective) or the Pareto-optimal trial with the highest safety.

Importances come from `optuna.importance.get_param_importances` (one set per objective) and are placed on layers
and groups by parameter name. Names are read tolerantly: lower-cased and cut into words and numbers at every
non-alphanumeric character and letter/digit boundary, so ``layer_3``, ``layers.3``, ``layer3`` and ``L3_attn`` ...
are read alike:

* ``layer N`` / ``layers N`` / ``l N`` → the per-layer factor of layer N;
* ``block N`` / ``blocks N`` → block N of B, B = the number of block parameters in the study (its layers by the
  recipe rule ⌊ℓ·B/L⌋);
* ``point N`` / ``points N`` / ``cp N`` / ``knot N`` → control point N of K (its layers: those whose interpolated
  factor it touches);
* a group word (``attn``/``attention``, ``mlp``/``ffn``/``feed``, ``norm``, ``embed``/``embedding``,
  ``head``, ``vision``/``visual``) → that group's factor (or the group of a layer/block/point parameter);
* ``scale`` / ``lambda`` / ``lam`` / ``global`` / ``alpha`` → the global scale;
* anything else → kind ``other``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from pydantic import ValidationError

from graft.databases import read_only_storage
from graft.display import printable
from graft.engines.mapping import Group
from graft.errors import InputError, UsageError
from graft.recipe import Coefficients, describe_validation_error

ParamKind = Literal["layer", "block", "point", "group", "scale", "other"]
IMPORTANCE_COLUMNS = ["objective", "param", "importance", "kind", "index", "group", "first_layer", "last_layer"]

_INDEXED: dict[str, ParamKind] = {"layer": "layer", "layers": "layer", "block": "block", "blocks": "block",
                                  "point": "point", "points": "point", "cp": "point", "knot": "point",
                                  "knots": "point"}
_GROUP_WORDS: dict[str, Group] = {"attn": "attn", "attention": "attn", "mlp": "mlp", "ffn": "mlp", "feed": "mlp",
                                  "norm": "norm", "embed": "embed", "embedding": "embed", "embeddings": "embed",
                                  "head": "head", "vision": "vision", "visual": "vision"}
_SCALE_WORDS = frozenset({"scale", "lambda", "lam", "global", "alpha"})


@dataclass(frozen=True)
class StudyChoice:
    """The trial whose coefficients the report shows, and why it was chosen."""

    study: str
    trial: int
    coefficients: Coefficients
    safety: float | None
    medical: float | None
    values: tuple[float, ...] | None
    reason: str
    vector: str | None = None  # what `graft search` recorded it searched (None for other studies)
    target: str | None = None


@dataclass(frozen=True)
class ParamTarget:
    kind: ParamKind
    index: int | None = None
    group: Group | None = None


def param_target(name: str) -> ParamTarget:
    """What a search parameter controls, from its name (see the module docstring for the accepted forms)."""
    words = re.findall(r"[a-z]+|\d+", name.lower())
    kind: ParamKind | None = None
    index = None
    group = None
    for i, word in enumerate(words):
        following = words[i + 1] if i + 1 < len(words) else ""
        if word in _INDEXED and kind is None and following.isdigit():
            kind, index = _INDEXED[word], int(following)
        elif word == "l" and kind is None and following.isdigit():
            kind, index = "layer", int(following)
        elif word in _GROUP_WORDS and group is None:
            group = _GROUP_WORDS[word]
    if kind is not None:
        return ParamTarget(kind, index, group)
    if group is not None:
        return ParamTarget("group", None, group)
    if any(word in _SCALE_WORDS for word in words):
        return ParamTarget("scale")
    return ParamTarget("other")


def layers_of(target: ParamTarget, num_layers: int, count: int) -> tuple[int, int] | None:
    """First and last layer a layer/block/point parameter acts on, by the recipe's own λ rule (`count` is the number
    of blocks or points in the study). None when the parameter is not per depth or does not fit `num_layers`."""
    if target.index is None:
        return None
    if target.kind == "layer":
        return (target.index, target.index) if target.index < num_layers else None
    if target.kind not in ("block", "point") or target.index >= count:
        return None
    unit = [0.0] * count
    unit[target.index] = 1.0
    key = "blocks" if target.kind == "block" else "control_points"
    try:
        factors = Coefficients(**{key: unit}).layer_factors(num_layers)
    except UsageError:
        return None
    touched = [layer for layer, f in enumerate(factors) if f != 0.0]
    return (touched[0], touched[-1]) if touched else None


# -- opening --------------------------------------------------------------------------------------------------------
def open_study(storage: str, study: str | None = None) -> Any:
    """`optuna.load_study`, with one-line errors naming the storage and the studies it holds."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = read_only_storage(storage)
    try:
        names = optuna.study.get_all_study_names(where)
    except Exception as exc:  # optuna raises storage-specific errors (sqlalchemy, JSON decoding...)
        raise InputError(f"{storage}: not a readable optuna storage ({exc.__class__.__name__}: {exc})") from exc
    if study is None:
        if len(names) != 1:
            raise UsageError(f"--study: name the study to read ({storage} holds: {_listed(names)})")
        study = names[0]
    if study not in names:
        raise InputError(f"{storage}: no study named {study!r} (studies there: {_listed(names)})")
    return optuna.load_study(study_name=study, storage=where)


def _listed(names: list[str], most: int = 10) -> str:
    """Study names read from a storage, as a message shows them: safe for a terminal, at most `most` of them."""
    shown = ", ".join(printable(n) for n in sorted(names)[:most]) or "none"
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def search_metadata(study: Any) -> dict[str, Any]:
    """What `graft search` recorded on the study (objective, vector, target...); {} for any other study."""
    from graft.search.study import METADATA_KEY

    meta = study.user_attrs.get(METADATA_KEY)
    return meta if isinstance(meta, dict) else {}


def choose_trial(study: Any, trial: int | None = None) -> tuple[Any, str]:
    """(trial, why): the trial named by number; else, for a `graft search` study, the trial its best_recipe.yaml
    holds (the search's own rule: feasible first, then safety); else the best trial (one objective) or the
    Pareto-optimal trial with the highest safety."""
    import optuna

    if trial is not None:
        found = [t for t in study.trials if t.number == trial]
        if not found:
            raise InputError(f"study {study.study_name!r} has no trial {trial} (it has {len(study.trials)} trials)")
        return found[0], f"trial {trial}, as asked"
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise InputError(f"study {study.study_name!r} has no completed trial yet")
    objective = search_metadata(study).get("objective")
    if objective is not None:
        from graft.search.config import Objective
        from graft.search.outputs import best_of, records

        best = best_of(records(complete), Objective.model_validate(objective))
        if best is not None:
            return next(t for t in complete if t.number == best.number), "the search's best, as in best_recipe.yaml"
    if len(study.directions) == 1:
        return study.best_trial, "the best trial"
    rated = [t for t in study.best_trials if isinstance(t.user_attrs.get("safety"), int | float)]
    if not rated:
        raise InputError(f"study {study.study_name!r}: its Pareto-optimal trials carry no 'safety' user attribute; "
                         "pick one with --trial N")
    return max(rated, key=lambda t: (t.user_attrs["safety"], -t.number)), \
        "the Pareto-optimal trial with the highest safety"


def trial_coefficients(study: Any, trial: Any) -> Coefficients:
    raw = trial.user_attrs.get("coefficients")
    where = f"study {study.study_name!r} trial {trial.number}"
    if raw is None:
        raise InputError(f"{where}: no 'coefficients' user attribute; was the study written by `graft search`?")
    try:
        return Coefficients.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{where}: invalid 'coefficients' ({describe_validation_error(exc)})") from exc


def study_coefficients(storage: str, study: str | None = None, trial: int | None = None) -> StudyChoice:
    """The coefficients of the chosen trial (see the module docstring for the rule)."""
    return choice_of(open_study(storage, study), trial)


def choice_of(opened: Any, trial: int | None = None) -> StudyChoice:
    chosen, reason = choose_trial(opened, trial)
    safety, medical = chosen.user_attrs.get("safety"), chosen.user_attrs.get("medical")
    meta = search_metadata(opened)
    return StudyChoice(opened.study_name, chosen.number, trial_coefficients(opened, chosen),
                       float(safety) if safety is not None else None, float(medical) if medical is not None else None,
                       tuple(chosen.values) if chosen.values is not None else None, reason,
                       meta.get("vector"), meta.get("target"))


def study_importance(
    storage: str, study: str | None = None, *, num_layers: int | None = None, evaluator: Any = None,
) -> pd.DataFrame:
    """Parameter importances per objective, each placed on a kind (layer, block, point, group, scale, other), an
    index, a group and the layers it acts on when `num_layers` is known. Columns: objective, param, importance,
    kind, index, group, first_layer, last_layer.

    The evaluator is fANOVA with a fixed seed unless one is given: optuna's default, PED-ANOVA, looks only at the
    top-quantile trials and misranks parameters in studies of a few dozen trials, which is what an evaluation-bound
    search produces (on a 24-trial study whose objective is layer_2 + 0.05·attn it ranked layer_1 first; fANOVA gives
    layer_2 0.95).
    """
    return importance_of(open_study(storage, study), num_layers=num_layers, evaluator=evaluator)


def importance_of(opened: Any, *, num_layers: int | None = None, evaluator: Any = None) -> pd.DataFrame:
    import optuna

    if evaluator is None:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    complete = [t for t in opened.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise InputError(f"study {opened.study_name!r} has no completed trial: no importances to compute")
    names = opened.metric_names or (["value"] if len(opened.directions) == 1
                                    else [f"objective_{i}" for i in range(len(opened.directions))])
    params = sorted({p for t in complete for p in t.params})
    targets = {p: param_target(p) for p in params}
    counts = {kind: 1 + max((t.index for t in targets.values() if t.kind == kind and t.index is not None), default=-1)
              for kind in ("block", "point")}
    rows = []
    for i, objective in enumerate(names):
        target = None if len(names) == 1 else (lambda t, i=i: t.values[i])
        try:
            importances = optuna.importance.get_param_importances(opened, evaluator=evaluator, target=target)
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"study {opened.study_name!r}: cannot compute importances ({exc})") from exc
        for param, value in sorted(importances.items(), key=lambda kv: -kv[1]):
            where = targets.get(param) or param_target(param)
            span = layers_of(where, num_layers, counts.get(where.kind, 0)) if num_layers else None
            rows.append({"objective": objective, "param": param, "importance": float(value), "kind": where.kind,
                         "index": where.index, "group": where.group, "first_layer": span[0] if span else None,
                         "last_layer": span[1] if span else None})
    table = pd.DataFrame(rows, columns=IMPORTANCE_COLUMNS)
    for column in ("index", "first_layer", "last_layer"):
        table[column] = table[column].astype("Int64")
    return table
