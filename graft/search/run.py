"""`run_search`: the Python API under `graft search` (a notebook calls it the same way).

space → trial parameters → coefficients → resident graft → evaluation suite → objective → Optuna, trial after
trial, until the study holds `trials` finished trials (shared by every worker on the same storage and study);
then the outputs are written from the study.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from graft.core.model_ids import looks_like_hub_id
from graft.core.recipe import Recipe
from graft.errors import OutputError, UsageError
from graft.flag_ranges import SEARCH, check
from graft.io.databases import check_study_storage
from graft.io.guard import adopt_legacy_folder, make_output_folder, note_finished
from graft.io.hub import pin, resolve_model, resolve_vector
from graft.io.tracking import TrialCallback, check_loggers, fail_all, finish_all, flat, log_safely, open_trackers

from .config import SearchEvalConfig
from .evaluation import check_operators
from .objective import Scorer, TrialObjective, directions, mean, metric_names, uses_constraints
from .outputs import lambda_cells, write_outputs
from .samplers import sampler_spec
from .space import Cell, SearchSpace
from .spaces import resolve as resolve_space
from .study import (
    METADATA_KEY,
    REFERENCE_KEY,
    Baseline,
    budget_state,
    make_sampler,
    open_storage,
    open_study,
    redact,
    run_worker,
    sampler_constraints,
    worker_seed,
)

MARKER = "search.json"  # says a folder is a graft search's output (so --out never writes into a stranger's)
DB_FILE = "graft.db"
CACHE_FILE = "verdicts.sqlite"
HELDOUT_FILE = "heldout.json"  # per-item outcomes behind summary.json's in-sample / held-out report


@dataclass(frozen=True)
class SearchResult:
    study: str
    storage: str  # password hidden
    out: Path
    ran: list[int]  # trial numbers this call finished
    summary: dict[str, Any]
    merged: Path | None = None

    @property
    def best(self) -> dict[str, Any] | None:
        return self.summary.get("best")


def run_search(
    *,
    space: SearchSpace | str | Path,
    eval_config: SearchEvalConfig | str | Path,
    trials: int,
    target: str | None = None,
    vector: str | None = None,
    recipe: Recipe | str | Path | None = None,
    storage: str | None = None,
    study: str = "graft-search",
    sampler: str | None = None,
    mode: str | None = None,
    max_medical_drop: float | None = None,
    max_over_refusal: float | None = None,
    seed: int = 0,
    out: str | Path = "graft-search",
    merge_best: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
    heartbeat: int = 60,
    grace_period: int | None = None,
    origin: str | None = None,
    scorer: Scorer | None = None,
    progress: Callable[[str], None] | None = None,
    callbacks: Sequence[TrialCallback] = (),
    log: Sequence[str] = (),
) -> SearchResult:
    """Run (or join, or resume) a coefficient search; see docs/search.md.

    `space` is a SearchSpace, a YAML file, or the name of a shipped space (`layerwise`; a file that exists wins).
    `trials` is the number of finished trials the *study* should reach, baselines included, whoever runs them.
    `scorer` replaces the resident graft + evaluation suite (tests and custom metrics use it); the final
    in-sample / held-out report needs its `items` method (`ItemScorer`) and is skipped without one.
    `origin` is the model the target was fine-tuned from (the orthogonal operator projects τ off target − origin).
    `callbacks` are called as `callback(study, frozen_trial)` after every trial this worker finishes (Optuna's
    callback signature: optuna-integration's MLflowCallback / WeightsAndBiasesCallback work as they are); `log`
    names trackers (mlflow, wandb) to send the search to, besides eval.yaml's `log:` (graft.io.tracking).
    """
    check(SEARCH, trials=trials, seed=seed, batch_size=batch_size, heartbeat=heartbeat,
          max_medical_drop=max_medical_drop, max_over_refusal=max_over_refusal)
    say = progress or (lambda _msg: None)
    space_file = None if isinstance(space, SearchSpace) else resolve_space(space)
    search_space = space if isinstance(space, SearchSpace) else SearchSpace.from_yaml(space_file)
    space_source = str(space_file) if space_file is not None else "search space"
    config = eval_config if isinstance(eval_config, SearchEvalConfig) else SearchEvalConfig.from_yaml(eval_config)
    config = config.with_objective(mode=mode, max_medical_drop=max_medical_drop, max_over_refusal=max_over_refusal)
    sampler_name = sampler or search_space.sampler
    sampler_spec(sampler_name)  # an unknown name: one line listing the known samplers
    if trials < 1:
        raise UsageError(f"--trials {trials}: expected a positive number of finished trials")
    objective = config.objective
    loggers = check_loggers([*log, *config.log], source="--log")  # a missing package fails before any work
    make_sampler(sampler_name, seed=seed, mode=objective.mode, constraints=None)  # refuses pareto + cmaes now
    base = _base_recipe(recipe, target, vector, origin)
    check_operators(base, search_space.operator_probes())
    if dtype != "auto":  # the recipe then says exactly which weights were evaluated (merge writes that dtype)
        base = base.updated(options={"dtype": dtype})
    num_layers, cells = _vector_layout(base.vector or "")
    search_space.check(num_layers, source=space_source)
    baselines = [Baseline(name, lam, params)
                 for name, lam, params in search_space.baseline_points(num_layers, cells, source=space_source)]
    if trials < len(baselines):
        raise UsageError(f"--trials {trials}: a study starts with {len(baselines)} baselines (λ = 0 and "
                         f"{len(baselines) - 1} uniform); ask for more trials or shorten baselines.uniform")

    if storage is not None:  # another application's database: refused before the output folder is made
        check_study_storage(storage, write=True)
    out = _prepare_out(Path(out), study, [base.target, base.vector, base.options.origin])
    url = storage or f"sqlite:///{(out / DB_FILE).resolve()}"
    metadata = {
        "version": 1, "space": search_space.model_dump(mode="json"), "objective": objective.model_dump(),
        "evaluation": config.model_dump(mode="json", exclude={"data", "batch_size", "objective", "log"}),
        "sampler": sampler_name, "num_layers": num_layers, "cells": [list(c) for c in cells],
        "target": base.target, "vector": base.vector,
        "split": _split_attr(config),
    }
    # Trackers start before the study is opened and any trial runs: a wrong server or key fails in seconds.
    trackers = open_trackers(loggers, f"graft search {study}", _tracked_params(metadata, trials, url, study, seed),
                             tags={"study": study}, lambdas=lambda c: lambda_cells(c, num_layers, cells))
    try:
        rdb = open_storage(url, heartbeat_interval=heartbeat, grace_period=grace_period)
    except BaseException:
        fail_all(trackers)
        raise
    constraints = sampler_constraints(objective) if uses_constraints(objective, sampler_name) else None

    def make(created: bool):
        return make_sampler(sampler_name, seed=worker_seed(seed, created), mode=objective.mode,
                            constraints=constraints)

    ran: list[int] = []
    own_scorer = scorer is None
    trial_scorer = scorer
    hooks = [*callbacks, *(log_safely(t, name) for t, name in zip(trackers, loggers, strict=True))]
    try:
        optuna_study, created = open_study(rdb, study, directions=directions(objective), metadata=metadata,
                                           baselines=baselines, make=make,
                                           metric_names=metric_names(objective, sampler_name))
        say(f"{'created' if created else 'joined'} study {study!r} in {redact(url)}; budget {trials} finished "
            "trials")
        config = _study_split(optuna_study, config, created, say)
        if budget_state(optuna_study).finished < trials:
            if trial_scorer is None:
                trial_scorer = _suite_scorer(config, base, out, device, batch_size, say)
            ran = _work(optuna_study, rdb, search_space, config, sampler_name, num_layers, baselines[0], trials,
                        trial_scorer, say, hooks)
        trials_now = optuna_study.get_trials(deepcopy=False)
        if trial_scorer is None:  # a finished study, reported again: the cached verdicts make this cheap
            trial_scorer = _suite_scorer(config, base, out, device, batch_size, say)
        report = _report(trials_now, config, objective, trial_scorer, out, say)
        meta = {"study": study, "storage": redact(url), "sampler": sampler_name, "budget": trials,
                "medical_reference": optuna_study.user_attrs.get(REFERENCE_KEY), "num_layers": num_layers,
                "split": _split_attr(config)}
        summary = write_outputs(out, trials_now, base=base, objective=objective, num_layers=num_layers,
                                cells=cells, meta=meta, report=report)
    except BaseException:
        fail_all(trackers)
        raise
    finally:
        if own_scorer and trial_scorer is not None:
            trial_scorer.close()  # type: ignore[attr-defined]
    # The search is done and its outputs written: a tracker failing now is a warning, not a failed search.
    finish_all(trackers, metrics=_tracked_figures(summary),
               files=[out / name for name in ("best_recipe.yaml", "summary.json", "trials.csv")])
    merged = None
    if merge_best:
        merged = _merge_best(out)
    return SearchResult(study, redact(url), out, ran, summary, merged)


def _tracked_params(metadata: dict[str, Any], trials: int, url: str, study: str, seed: int) -> dict[str, Any]:
    """What a tracker shows as the search's parameters: the study's own metadata, flattened."""
    return {**flat("", {k: v for k, v in metadata.items() if k != "cells"}), "budget": trials,
            "storage": redact(url), "study": study, "seed": seed}


def _tracked_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The final figures a tracker shows: the best trial, λ = 0, the best uniform λ (in sample), and the held-out
    report when there is one (`held_out.<recipe>.<figure>` and `..._stderr`)."""
    figures: dict[str, Any] = {}
    for key in ("best", "lambda0", "best_uniform"):
        row = summary.get(key) or {}
        for name in ("safety", "medical", "medical_drop", "over_refusal", "number"):
            figures[f"{key}.{name}"] = row.get(name)
    for label, model in ((summary.get("report") or {}).get("models") or {}).items():
        for part in ("held_out", "in_sample"):
            for name, est in (model.get(part) or {}).items():
                if isinstance(est, dict):
                    figures[f"{part}.{label}.{name}"] = est.get("value")
                    figures[f"{part}.{label}.{name}_stderr"] = est.get("se")
    return figures


def _suite_scorer(config: SearchEvalConfig, base: Recipe, out: Path, device: str, batch_size: int | None,
                  say: Callable[[str], None]) -> Scorer:
    from .evaluation import SuiteScorer

    return SuiteScorer(config, base, cache=out / CACHE_FILE, device=device, batch_size=batch_size, say=say)


def _split_attr(config: SearchEvalConfig) -> dict[str, Any]:
    split = config.split("heldout")
    return {"holdout": split.holdout, "seed": split.seed} if split else {"holdout": 0.0, "seed": None}


def _study_split(study, config: SearchEvalConfig, created: bool, say: Callable[[str], None]) -> SearchEvalConfig:
    """The split the study was created with wins: every worker and every resume scores the same search part. A
    study from before splits existed searched on every item: it goes on so (holdout 0, figures in sample)."""
    if created:
        return config
    stored = study.user_attrs.get(METADATA_KEY, {})
    if "split" not in stored:
        if config.holdout > 0:
            say("this study was created before graft held items out: it goes on scoring every item (holdout 0); "
                "its figures are in sample")
        return config.model_copy(update={"holdout": 0.0, "split_seed": None})
    split = stored["split"]
    if float(split.get("holdout", 0.0)) != config.holdout or (
            config.holdout > 0 and split.get("seed") != _split_attr(config)["seed"]):
        raise UsageError(f"study {study.study_name!r} holds out {split.get('holdout')} of every benchmark (split "
                         f"seed {split.get('seed')}), not {config.holdout} (seed {_split_attr(config)['seed']}); "
                         "resume it with the same holdout and split_seed in eval.yaml, or choose another --study")
    return config


def _report(trials: list[FrozenTrial], config: SearchEvalConfig, objective, scorer: Scorer, out: Path,
            say: Callable[[str], None]) -> dict[str, Any] | None:
    """Score the searched recipe, λ = 0 and every uniform λ on the search's items and on the held-out ones;
    write the per-item outcomes to heldout.json (anyone can recompute the figures from it)."""
    from graft.core.recipe import Coefficients

    from .outputs import best_of, best_uniform_of, json_text, records, write_search_file
    from .report import build_report

    if not hasattr(scorer, "items"):
        say("the scorer gives no per-item outcomes: no in-sample / held-out report")
        return None
    recs = records(trials)
    searched = best_of([r for r in recs if r.baseline is None], objective)
    chosen = [("searched", searched)] if searched is not None else []
    chosen += [(r.baseline, r) for r in recs if r.baseline and r.rated]
    uniform = best_uniform_of(recs, objective)
    if not chosen:
        return None
    parts = ["search", "heldout"] if config.holdout > 0 else ["search"]
    say(f"report: scoring {len(chosen)} recipes on the search's items"
        + (" and on the held-out ones" if len(parts) == 2 else " (nothing held out)"))
    models: dict[str, dict[str, Any]] = {}
    for label, r in chosen:
        c = Coefficients.model_validate(r.coefficients)
        entry: dict[str, Any] = {"trial": r.number, "baseline": r.baseline, "operator": r.operator,
                                 "coefficients": r.coefficients}
        for part in parts:
            extra = {} if r.operator is None else {"operator": r.operator}
            entry["in_sample" if part == "search" else "held_out"] = scorer.items(  # type: ignore[attr-defined]
                c, config.report_stage(part), **extra)
        models[label] = entry
    report = build_report(models, config, searched="searched" if searched is not None else None,
                          best_uniform=uniform.baseline if uniform is not None else None)
    report["best_uniform"] = uniform.baseline if uniform is not None else None
    write_search_file(out / HELDOUT_FILE, json_text({"split": report["split"], "models": models}))
    return report


def _work(study, storage, space: SearchSpace, config: SearchEvalConfig, sampler: str, num_layers: int,
          lambda0: Baseline, trials: int, trial_scorer: Scorer, say: Callable[[str], None],
          hooks: Sequence[TrialCallback] = ()) -> list[int]:
    reference = study.user_attrs.get(REFERENCE_KEY)
    if reference is None:
        say("scoring the target itself (λ = 0) on the medical tasks: the reference for the medical drop")
        scores = trial_scorer.score(space.coefficients(lambda0.params, num_layers), config.stage("medical"))
        reference = mean([scores[t] for t in config.medical])
        study.set_user_attr(REFERENCE_KEY, reference)

    def incumbent() -> float | None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [t.user_attrs["screening"] for t in done if t.user_attrs.get("screening") is not None]
        return max(values) if values else None

    objective = TrialObjective(space, config, trial_scorer, num_layers=num_layers, reference=reference,
                               sampler=sampler, incumbent=incumbent)
    report = run_worker(study, storage, objective, trials, poll_s=min(1.0, storage.heartbeat_interval or 1),
                        on_trial=lambda t: _finished(study, t, say, hooks, config.objective),
                        record_constraints=config.objective.mode == "constrained")
    return report.ran


def _finished(study, trial: FrozenTrial, say: Callable[[str], None], hooks: Sequence[TrialCallback],
              objective) -> None:
    say(_describe(trial))
    say(standing(study.get_trials(deepcopy=False), objective))
    for hook in hooks:
        hook(study, trial)


def standing(trials: list[FrozenTrial], objective) -> str:
    """The running best feasible searched trial beside the best uniform λ so far (in sample: the scores the search
    chooses on), as one line."""
    from .outputs import best_of, best_uniform_of, records

    recs = records(trials)
    searched = best_of([r for r in recs if r.baseline is None and r.rated and r.feasible(objective)], objective)
    uniform = best_uniform_of(recs, objective)

    def brief(r) -> str:
        over = f", over-refusal {r.over_refusal:.3f}" if r.over_refusal is not None else ""
        return f"safety {r.safety:.3f}, medical {r.medical:.3f}{over}"

    parts = [f"best feasible searched: trial {searched.number} ({brief(searched)})" if searched else
             "best feasible searched: none yet"]
    if uniform is not None:
        parts.append(f"best uniform λ: {uniform.baseline} ({brief(uniform)})")
    if searched is not None and uniform is not None:
        parts.append(f"searched − uniform: safety {searched.safety - uniform.safety:+.3f}, medical "
                     f"{searched.medical - uniform.medical:+.3f}")
    return "so far (in sample): " + "; ".join(parts)


def _describe(trial: FrozenTrial) -> str:
    a = trial.user_attrs
    name = f"trial {trial.number}" + (f" ({a['baseline']})" if a.get("baseline") else "")
    if trial.state == TrialState.PRUNED:
        return f"{name}: stopped at screening ({a.get('pruned')})"
    return (f"{name}: safety {a.get('safety', float('nan')):.4f}, medical {a.get('medical', float('nan')):.4f} "
            f"(drop {a.get('medical_drop', float('nan')):+.4f}), {a.get('seconds', 0):.1f} s")


def _base_recipe(recipe: Recipe | str | Path | None, target: str | None, vector: str | None,
                 origin: str | None = None) -> Recipe:
    """The recipe every trial varies the coefficients of; local paths made absolute so best_recipe.yaml works
    from anywhere."""
    base = recipe if isinstance(recipe, Recipe) else (Recipe.from_yaml(recipe) if recipe else Recipe())
    changes: dict[str, Any] = {k: v for k, v in (("target", target), ("vector", vector)) if v is not None}
    base = base.model_copy(update={**changes, "out": None})
    if not base.target or not base.vector:
        raise UsageError("a search needs a target and a vector (--target/--vector or the recipe's target/vector)")

    def absolute(value: str | None, role: str) -> str | None:
        if value is None:
            return value
        if looks_like_hub_id(value) and not Path(value).exists():
            # Pinned to the commit the hub resolves now: every trial (and every worker that joins) grafts the same
            # weights even if the branch moves during the search.
            found = resolve_vector(value) if role == "vector" else resolve_model(value, role=role)
            return pin(value, found)
        return str(Path(value).expanduser().resolve())

    options = base.options.model_copy(update={"origin": absolute(origin or base.options.origin, "origin")})
    return base.model_copy(update={"target": absolute(base.target, "target"), "vector": absolute(base.vector, "vector"),
                                   "options": options})


def _vector_layout(vector: str) -> tuple[int, list[Cell]]:
    """Layer count and the (layer, group) pairs the vector holds, from its manifest alone."""
    from graft.io.vector_folder import SafetyVector

    opened = SafetyVector.open(vector)
    try:
        manifest = opened.manifest
        cells = sorted({(t.layer, t.group) for t in manifest.tensors.values()},
                       key=lambda c: (c[0] is None, c[0] or 0, c[1]))
        return manifest.num_layers, cells
    finally:
        opened.close()


def _prepare_out(out: Path, study: str, inputs: list[str | None]) -> Path:
    # A rerun joins the study in the same folder, so an earlier search's folder is reused, never replaced.
    adopt_legacy_folder(out, MARKER, kind="search")
    out = make_output_folder(out, [p for p in inputs if p and Path(p).exists()], kind="search", reuse=True)
    note_finished(out, "its study keeps every finished trial: rerun the same command to resume")
    try:
        marker = out / MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"format": "graft-search", "study": study}, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create it ({exc.strerror})") from exc
    return out


def _merge_best(out: Path) -> Path:
    from graft.engines.merge import merge

    recipe_file = out / "best_recipe.yaml"
    if not recipe_file.is_file():
        raise OutputError(f"{recipe_file}: no best trial to merge yet (no trial has completed)")
    recipe = Recipe.from_yaml(recipe_file).model_copy(update={"out": str(out / "merged")})
    return merge(recipe, force=True).out


__all__ = ["SearchResult", "run_search"]
