"""`run_search`: the Python API under `graft search` (a notebook calls it the same way).

space → trial parameters → coefficients → resident graft → evaluation suite → objective → Optuna, trial after
trial, until the study holds `trials` finished trials (shared by every worker on the same storage and study);
then the outputs are written from the study.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from graft.errors import OutputError, UsageError
from graft.guard import adopt_legacy_folder, make_output_folder
from graft.hub import looks_like_hub_id
from graft.recipe import Recipe

from .config import SearchEvalConfig
from .evaluation import check_operators
from .objective import Scorer, TrialObjective, directions, mean, uses_constraints
from .outputs import write_outputs
from .space import SAMPLERS, Cell, SearchSpace
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
) -> SearchResult:
    """Run (or join, or resume) a coefficient search; see docs/search.md.

    `trials` is the number of finished trials the *study* should reach, baselines included, whoever runs them.
    `scorer` replaces the resident graft + evaluation suite (tests and custom metrics use it); the final
    in-sample / held-out report needs its `items` method (`ItemScorer`) and is skipped without one.
    `origin` is the model the target was fine-tuned from (the orthogonal operator projects τ off target − origin).
    """
    say = progress or (lambda _msg: None)
    the_space = space if isinstance(space, SearchSpace) else SearchSpace.from_yaml(space)
    space_source = str(space) if not isinstance(space, SearchSpace) else "search space"
    config = eval_config if isinstance(eval_config, SearchEvalConfig) else SearchEvalConfig.from_yaml(eval_config)
    config = config.with_objective(mode=mode, max_medical_drop=max_medical_drop, max_over_refusal=max_over_refusal)
    sampler_name = sampler or the_space.sampler
    if sampler_name not in SAMPLERS:
        raise UsageError(f"--sampler {sampler_name}: expected one of {', '.join(SAMPLERS)}")
    if trials < 1:
        raise UsageError(f"--trials {trials}: expected a positive number of finished trials")
    objective = config.objective
    make_sampler(sampler_name, seed=seed, mode=objective.mode, constraints=None)  # refuses pareto + cmaes now
    base = _base_recipe(recipe, target, vector, origin)
    check_operators(base, the_space.operator_probes())
    if dtype != "auto":  # the recipe then says exactly which weights were evaluated (merge writes that dtype)
        base = base.updated(options={"dtype": dtype})
    num_layers, cells = _vector_layout(base.vector or "")
    the_space.check(num_layers, source=space_source)
    baselines = [Baseline(name, lam, params)
                 for name, lam, params in the_space.baseline_points(num_layers, cells, source=space_source)]
    if trials < len(baselines):
        raise UsageError(f"--trials {trials}: a study starts with {len(baselines)} baselines (λ = 0 and "
                         f"{len(baselines) - 1} uniform); ask for more trials or shorten baselines.uniform")

    out = _prepare_out(Path(out), study, [base.target, base.vector, base.options.origin])
    url = storage or f"sqlite:///{(out / DB_FILE).resolve()}"
    rdb = open_storage(url, heartbeat_interval=heartbeat, grace_period=grace_period)
    metadata = {
        "version": 1, "space": the_space.model_dump(mode="json"), "objective": objective.model_dump(),
        "evaluation": config.model_dump(mode="json", exclude={"data", "batch_size", "objective"}),
        "sampler": sampler_name, "num_layers": num_layers, "cells": [list(c) for c in cells],
        "target": base.target, "vector": base.vector,
        "split": _split_attr(config),
    }
    constraints = sampler_constraints(objective) if uses_constraints(objective, sampler_name) else None

    def make(created: bool):
        return make_sampler(sampler_name, seed=worker_seed(seed, created), mode=objective.mode,
                            constraints=constraints)

    the_study, created = open_study(rdb, study, directions=directions(objective), metadata=metadata,
                                    baselines=baselines, make=make)
    say(f"{'created' if created else 'joined'} study {study!r} in {redact(url)}; budget {trials} finished trials")
    config = _study_split(the_study, config, created, say)

    ran: list[int] = []
    own_scorer = scorer is None
    the_scorer = scorer
    try:
        if budget_state(the_study).finished < trials:
            if the_scorer is None:
                the_scorer = _suite_scorer(config, base, out, device, batch_size, say)
            ran = _work(the_study, rdb, the_space, config, sampler_name, num_layers, baselines[0], trials, the_scorer,
                        say)
        trials_now = the_study.get_trials(deepcopy=False)
        if the_scorer is None:  # a finished study, reported again: the cached verdicts make this cheap
            the_scorer = _suite_scorer(config, base, out, device, batch_size, say)
        report = _report(trials_now, config, objective, the_scorer, out, say)
    finally:
        if own_scorer and the_scorer is not None:
            the_scorer.close()  # type: ignore[attr-defined]

    meta = {"study": study, "storage": redact(url), "sampler": sampler_name, "budget": trials,
            "medical_reference": the_study.user_attrs.get(REFERENCE_KEY), "num_layers": num_layers,
            "split": _split_attr(config)}
    summary = write_outputs(out, trials_now, base=base, objective=objective, num_layers=num_layers, cells=cells,
                            meta=meta, report=report)
    merged = None
    if merge_best:
        merged = _merge_best(out)
    return SearchResult(study, redact(url), out, ran, summary, merged)


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
    from graft.recipe import Coefficients

    from .outputs import _atomic_write, _json, best_of, best_uniform_of, records
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
    _atomic_write(out / HELDOUT_FILE, _json({"split": report["split"], "models": models}))
    return report


def _work(study, storage, space: SearchSpace, config: SearchEvalConfig, sampler: str, num_layers: int,
          lambda0: Baseline, trials: int, the_scorer: Scorer, say: Callable[[str], None]) -> list[int]:
    reference = study.user_attrs.get(REFERENCE_KEY)
    if reference is None:
        say("scoring the target itself (λ = 0) on the medical tasks: the reference for the medical drop")
        scores = the_scorer.score(space.coefficients(lambda0.params, num_layers), config.stage("medical"))
        reference = mean([scores[t] for t in config.medical])
        study.set_user_attr(REFERENCE_KEY, reference)

    def incumbent() -> float | None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [t.user_attrs["screening"] for t in done if t.user_attrs.get("screening") is not None]
        return max(values) if values else None

    objective = TrialObjective(space, config, the_scorer, num_layers=num_layers, reference=reference,
                               sampler=sampler, incumbent=incumbent)
    report = run_worker(study, storage, objective, trials, poll_s=min(1.0, storage.heartbeat_interval or 1),
                        on_trial=lambda t: say(_describe(t)))
    return report.ran


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

    def absolute(value: str | None) -> str | None:
        if value is None or (looks_like_hub_id(value) and not Path(value).exists()):
            return value
        return str(Path(value).expanduser().resolve())

    options = base.options.model_copy(update={"origin": absolute(origin or base.options.origin)})
    return base.model_copy(update={"target": absolute(base.target), "vector": absolute(base.vector),
                                   "options": options})


def _vector_layout(vector: str) -> tuple[int, list[Cell]]:
    """Layer count and the (layer, group) pairs the vector holds, from its manifest alone."""
    from graft.vector import SafetyVector

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
    try:
        marker = out / MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"format": "graft-search", "study": study}, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create it ({exc.strerror})") from exc
    return out


def _merge_best(out: Path) -> Path:
    from graft.merge import merge

    recipe_file = out / "best_recipe.yaml"
    if not recipe_file.is_file():
        raise OutputError(f"{recipe_file}: no best trial to merge yet (no trial has completed)")
    recipe = Recipe.from_yaml(recipe_file).model_copy(update={"out": str(out / "merged")})
    return merge(recipe, force=True).out


__all__ = ["SearchResult", "run_search"]
