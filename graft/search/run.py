"""`run_search`: the Python API under `graft search` (a notebook calls it the same way).

space → trial parameters → coefficients → resident graft → evaluation suite → objective → Optuna, trial after
trial, until the study holds `trials` finished searched trials besides its baselines (shared by every worker on the
same storage and study); then the final pick, the held-out report and the outputs, written from the study.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from graft.core.model_ids import looks_like_hub_id
from graft.core.recipe import Recipe
from graft.display import shows_progress
from graft.errors import OutputError, UsageError
from graft.flag_ranges import SEARCH, check
from graft.io.databases import check_study_storage
from graft.io.guard import adopt_legacy_folder, make_output_folder, note_finished
from graft.io.hub import pin, resolve_model, resolve_vector
from graft.io.tracking import TrialCallback, check_loggers, fail_all, finish_all, flat, log_safely, open_trackers

from .advice import Notes, closing_warnings, delta_resolution, target_breaks_a_cap
from .config import SearchEvalConfig
from .evaluation import check_operators
from .fidelity import RungPlan, check_budget, plan_rungs, pruner
from .objective import (
    Scorer,
    TrialObjective,
    directions,
    judge_trial,
    metric_names,
    outcomes_of,
    uses_constraints,
)
from .outputs import Chosen, lambda_cells, records, write_outputs
from .pick import Pick, front, pick_on, rescore_set
from .samplers import sampler_spec
from .space import OPERATOR_PARAM, Cell, SearchSpace
from .spaces import resolve as resolve_space
from .steps import StepCount, final_phase_estimate
from .study import (
    METADATA_KEY,
    REFERENCE_KEY,
    Baseline,
    budget_state,
    items_spent,
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
HELD_OUT_FILE = "heldout.json"  # per-item outcomes behind summary.json's in-sample / held-out report
PROTOCOL = 2  # 2: paired bounds, rungs, a selection part; a study without it is continued as it was made
NO_TRIAL_CAP = 10**9  # --budget-items alone: the item budget ends the study


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

    def report_frame(self):
        """The held-out report as a pandas DataFrame: one row per recipe, each figure held out and in sample with
        its standard error and their gap (graft.search.frames)."""
        from .frames import report_frame

        return report_frame(self.summary.get("report"))

    def trials_frame(self):
        """Every trial as a pandas DataFrame (trials.csv)."""
        from .frames import trials_frame

        return trials_frame(self.out)


@shows_progress(unit="steps", title="search", into="steps")
def run_search(
    *,
    space: SearchSpace | str | Path,
    eval_config: SearchEvalConfig | str | Path,
    trials: int | None = None,
    target: str | None = None,
    vector: str | None = None,
    recipe: Recipe | str | Path | None = None,
    storage: str | None = None,
    study: str = "graft-search",
    sampler: str | None = None,
    mode: str | None = None,
    max_medical_drop: float | None = None,
    max_over_refusal: float | None = None,
    confidence: float | None = None,
    keep_target_safety: bool | None = None,
    budget_items: int | None = None,
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
    steps: Callable[[int, int], None] | None = None,
    show_progress: bool | None = None,
) -> SearchResult:
    """Run (or join, or resume) a coefficient search; see docs/search.md.

    `space` is a SearchSpace, a YAML file, or the name of a shipped space (`layerwise`; a file that exists wins).
    `trials` is the number of searched trials the *study* should finish, whoever runs them; the baselines (λ = 0
    and the space's uniform λ) run first and come on top;
    `budget_items` (instead or as well) the item evaluations its trials may spend (each trial counts the items of
    the last rung it reached). `confidence` and `keep_target_safety` override eval.yaml's objective.
    `scorer` replaces the resident graft + evaluation suite (tests and custom metrics use it); the final
    in-sample / held-out report needs its `items` method (`ItemScorer`) and is skipped without one.
    `origin` is the model the target was fine-tuned from (the orthogonal operator projects τ off target − origin).
    `callbacks` are called as `callback(study, frozen_trial)` after every trial this worker finishes (Optuna's
    callback signature: optuna-integration's MLflowCallback / WeightsAndBiasesCallback work as they are); `log`
    names trackers (mlflow, wandb) to send the search to, besides eval.yaml's `log:` (graft.io.tracking).
    `steps(done, total)` follows the whole run in steps: a finished trial of the study, or one recipe the final pick
    or the report scores again (each about a trial's work); `total` is an estimate until the final phase begins,
    then exact: what a progress bar's ETA needs to include the report.
    Without `steps`, a bar of its own follows them in a Jupyter notebook (or anywhere with `show_progress=True`;
    none with False), given a trial budget.
    """
    check(SEARCH, trials=trials, seed=seed, batch_size=batch_size, heartbeat=heartbeat,
          max_medical_drop=max_medical_drop, max_over_refusal=max_over_refusal, confidence=confidence,
          budget_items=budget_items)
    say = progress or (lambda _msg: None)
    space_file = None if isinstance(space, SearchSpace) else resolve_space(space)
    search_space = space if isinstance(space, SearchSpace) else SearchSpace.from_yaml(space_file)
    space_source = str(space_file) if space_file is not None else "search space"
    config = eval_config if isinstance(eval_config, SearchEvalConfig) else SearchEvalConfig.from_yaml(eval_config)
    config = config.with_objective(mode=mode, max_medical_drop=max_medical_drop, max_over_refusal=max_over_refusal,
                                   confidence=confidence, keep_target_safety=keep_target_safety)
    sampler_name = sampler or search_space.sampler
    sampler_spec(sampler_name)  # an unknown name: one line listing the known samplers
    if trials is None and budget_items is None:
        raise UsageError("give --trials (finished trials) or --budget-items (item evaluations), or both")
    if trials is not None and trials < 1:
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
    pool = _pool_sizes(config, scorer)
    plan = plan_rungs(config.fidelity.rungs, config.fidelity.reduction, config.fidelity.min_items, pool,
                      config.figures(), multi_fidelity=objective.mode != "pareto", source=_source(eval_config))
    if budget_items is not None:
        check_budget(budget_items, pool, plan, len(baselines))
    cap = trials + len(baselines) if trials is not None else NO_TRIAL_CAP  # the baselines come on top

    if storage is not None:  # another application's database: refused before the output folder is made
        check_study_storage(storage, write=True)
    out = _prepare_out(Path(out), study, [base.target, base.vector, base.options.origin])
    url = storage or f"sqlite:///{(out / DB_FILE).resolve()}"
    metadata = {
        "version": 1, "space": search_space.model_dump(mode="json"), "objective": objective.model_dump(),
        "evaluation": config.model_dump(mode="json", exclude={"data", "batch_size", "objective", "log"}),
        "sampler": sampler_name, "num_layers": num_layers, "cells": [list(c) for c in cells],
        "target": base.target, "vector": base.vector,
        "split": _split_attr(config), "protocol": PROTOCOL, "rungs": plan.describe(pool),
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
                                           metric_names=metric_names(objective, sampler_name), pruner=pruner(plan))
        budget = " and ".join(x for x in (f"{trials} searched trials" if trials is not None else "",
                                          f"{budget_items} item evaluations" if budget_items is not None else "")
                              if x)
        budget += (f", after {len(baselines)} baselines (λ = 0 and {len(baselines) - 1} uniform λ)"
                   if len(baselines) > 1 else ", after the λ = 0 baseline")
        if trials is not None and steps is not None:
            budget += ("; progress in steps: each trial, then each recipe the final pick and the held-out report "
                       "score again")
        tracker = StepCount(steps, cap if trials is not None else None,
                            final_phase_estimate(config, len(baselines),
                                                 per_item=scorer is None or hasattr(scorer, "items")))
        tracker.trials(budget_state(optuna_study).finished)
        hooks = [*hooks, lambda st, _t: tracker.trials(budget_state(st).finished)]
        say(f"{'created' if created else 'joined'} study {study!r} in {redact(url)}; budget {budget}")
        config = _study_split(optuna_study, config, created, say)
        config, plan = _study_protocol(optuna_study, config, plan, created, say)
        objective = config.objective
        notes = Notes()
        resolution = delta_resolution(config, pool, plan)
        for warning in (resolution or {}).get("warning"), (resolution or {}).get("over_refusal_warning"):
            if warning:
                notes.warn(warning)
        _say_protocol(config, pool, plan, resolution, say)
        spent = items_spent(optuna_study.get_trials(deepcopy=False))
        if budget_state(optuna_study).finished < cap and (budget_items is None or spent < budget_items):
            if trial_scorer is None:
                trial_scorer = _suite_scorer(config, base, out, device, batch_size, say)
            ran = _work(optuna_study, rdb, search_space, config, sampler_name, num_layers, baselines[0], cap,
                        trial_scorer, say, hooks, plan=plan, budget_items=budget_items, notes=notes)
        trials_now = optuna_study.get_trials(deepcopy=False)
        if trial_scorer is None:  # a finished study, reported again: the cached verdicts make this cheap
            trial_scorer = _suite_scorer(config, base, out, device, batch_size, say)
        tracker.trials(budget_state(optuna_study).finished)
        pick, chosen = _final_pick(trials_now, config, sampler_name, trial_scorer, baselines[0], plan, say, notes,
                                   tracker=tracker)
        report = _report(trials_now, config, objective, trial_scorer, out, say, pick=pick, plan=plan,
                         sampler=sampler_name, tracker=tracker)
        closing_warnings(notes, records(trials_now), pick, report, search_space, num_layers, config, space_source)
        meta = {"study": study, "storage": redact(url), "sampler": sampler_name, "budget": trials,
                "budget_items": budget_items, "medical_reference": optuna_study.user_attrs.get(REFERENCE_KEY),
                "num_layers": num_layers, "split": _split_attr(config),
                "protocol": _protocol_attr(config, pool, plan), "delta": resolution,
                "items": _items_attr(trials_now, plan), "pick": pick.describe() if pick else None,
                "warnings": notes.lines, "boundary": [asdict(e) for e in notes.edges]}
        summary = write_outputs(out, trials_now, base=base, objective=objective, num_layers=num_layers,
                                cells=cells, meta=meta, report=report, chosen=chosen)
    except BaseException:
        fail_all(trackers)
        raise
    finally:
        if own_scorer and trial_scorer is not None:
            trial_scorer.close()  # type: ignore[attr-defined]
    # The search is done and its outputs written: a tracker failing now is a warning, not a failed search.
    finish_all(trackers, metrics=_tracked_figures(summary),
               files=[out / name for name in ("best_recipe.yaml", "summary.json", "trials.csv")], say=say)
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
    report = summary.get("report") or {}
    models = dict(report.get("models") or {})
    if report.get("upper_bound"):  # chosen on held-out items: named so, never a result
        models["upper_bound_chosen_on_held_out"] = report["upper_bound"]
    for label, model in models.items():
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


def _source(eval_config: SearchEvalConfig | str | Path) -> str:
    return "eval config" if isinstance(eval_config, SearchEvalConfig) else str(eval_config)


def _pool_sizes(config: SearchEvalConfig, scorer: Scorer | None) -> dict[str, int] | None:
    """Items per task in the rung pool (what the rungs are shares of), from the benchmark files; from the scorer's
    own `count` when one is injected, None when it cannot count."""
    from .evaluation import count_items

    stage = config.rung_stage(0, RungPlan(1, config.fidelity.reduction))
    if scorer is None:
        return count_items(config, stage)
    count = getattr(scorer, "count", None)
    return count(stage) if count is not None else None


def _study_protocol(study, config: SearchEvalConfig, plan: RungPlan, created: bool, say: Callable[[str], None]
                    ) -> tuple[SearchEvalConfig, RungPlan]:
    """A study created before paired bounds and rungs existed goes on as it was made (point estimates, every
    trial on every item, no selection part), so its trials stay comparable."""
    if created or study.user_attrs.get(METADATA_KEY, {}).get("protocol"):
        return config, plan
    say("this study was created before graft judged constraints by paired bounds and ran trials in rungs: it goes "
        "on as it was made (point estimates, one rung, no selection part)")
    objective = config.objective.model_copy(update={"confidence": 0.5})
    config = config.model_copy(update={
        "objective": objective, "fidelity": config.fidelity.model_copy(update={"rungs": 1}),
        "selection": config.selection.model_copy(update={"share": 0.0})})
    return config, RungPlan(1, config.fidelity.reduction)


def _protocol_attr(config: SearchEvalConfig, pool: dict[str, int] | None, plan: RungPlan) -> dict[str, Any]:
    from .bounds import z_of
    from .fidelity import selection_count

    objective = config.objective
    return {"confidence": objective.confidence, "z": z_of(objective.confidence),
            "keep_target_safety": objective.keep_target_safety, "fidelity": plan.describe(pool),
            "selection": {**config.selection.model_dump(),
                          "items": None if pool is None else {
                              t: selection_count(round(n / (1 - config.selection.share)) if config.selection.share
                                                 else n, config.selection.share) for t, n in pool.items()}},
            "pool_items": pool}


def _items_attr(trials: list[FrozenTrial], plan: RungPlan) -> dict[str, Any]:
    """How many items the trials saw: in all (the item budget's count), and how many trials stopped on each
    rung."""
    recs = [r for r in records(trials) if r.state in ("COMPLETE", "PRUNED")]
    by_rung = {str(r): sum(1 for t in recs if t.rung == r) for r in range(plan.count)}
    seen = [t.items for t in recs if t.items is not None]
    return {"total": items_spent(trials), "trials_by_last_rung": by_rung,
            "mean_per_trial": (sum(seen) / len(seen)) if seen else None}


def _say_protocol(config: SearchEvalConfig, pool: dict[str, int] | None, plan: RungPlan,
                  resolution: dict[str, Any] | None, say: Callable[[str], None]) -> None:
    from .bounds import z_of

    objective = config.objective
    if pool is not None:
        rungs = " → ".join(str(sum(plan.items(pool, r).values())) for r in range(plan.count))
        say(f"trials: {plan.count} rung(s) of items ({rungs} items a trial, reduction {plan.reduction}); the "
            f"final pick re-scores {config.selection.finalists} finalists on a selection part of "
            f"{100 * config.selection.share:.0f} % of the search items")
    if objective.mode == "constrained":
        line = (f"constraints judged by one-sided bounds at confidence {objective.confidence:g} "
                f"(z = {z_of(objective.confidence):.2f}), paired with λ = 0 on the same items")
        if resolution is not None:
            line += (f"; δ = {resolution['value']:.4g} of the medical score ≈ {resolution['items']:.1f} items of "
                     f"{resolution['medical_items']}")
        say(line)


def _final_pick(trials: list[FrozenTrial], config: SearchEvalConfig, sampler: str, scorer: Scorer,
                lambda0: Baseline, plan: RungPlan, say: Callable[[str], None],
                notes: Notes | None = None, tracker: StepCount | None = None) -> tuple[Pick | None, Chosen | None]:
    """graft.search.pick: the finalists (and baselines) scored again on the whole search part, the pick made
    there. Without per-item outcomes or a selection part, the rule on the rung pool."""
    from graft.core.recipe import Coefficients

    recs = records(trials)
    pool = candidates_of(recs, plan.top, notes)
    if not pool:
        return None, None
    objective, k = config.objective, config.selection.finalists
    rescored = None
    reference = next((r for r in pool if r.baseline == "lambda0"), None)
    if hasattr(scorer, "items") and config.selection.share > 0 and reference is not None:
        stage = config.report_stage("search")

        def outcomes(r):
            extra = {} if r.operator is None else {"operator": r.operator}
            scored = scorer.items(Coefficients.model_validate(r.coefficients), stage, **extra)  # type: ignore[attr-defined]
            if tracker is not None:
                tracker.rescored()
            return scored

        again = rescore_set(pool, objective, k)
        if tracker is not None:
            tracker.final_phase(pick=len(again) + 1)  # λ = 0 is scored once more as the reference
        say(f"final pick: {len(again)} recipes ({min(k, len(again))} finalists and the baselines) judged on the whole "
            "search part (the rung pool and the selection part no trial was scored on)")
        ref = outcomes(reference)
        rescored = {r.number: judge_trial(outcomes(r), ref, config) for r in again}
    pick = pick_on(pool, rescored, objective, sampler, k)
    return pick, Chosen(pick.best, pick.searched, pick.uniform)


def candidates_of(recs: list, top: int, notes: Notes | None = None) -> list:
    """The trials the final pick chooses among: those scored on the whole rung pool. When a small budget leaves no
    searched trial there, the searched trials of the highest rung any reached (said as a warning): the pick then
    scores its finalists on the whole search part anyway."""
    rated = [r for r in recs if r.rated]
    pool = [r for r in rated if r.reached(top)]
    searched = [r for r in rated if r.baseline is None]
    if searched and not any(r.baseline is None for r in pool):
        highest = max(r.rung or 0 for r in searched)
        if notes is not None:
            notes.warn(f"no searched trial reached the last rung (rung {top}); the finalists come from rung "
                       f"{highest}, the highest any reached: give the search more trials (--trials) or fewer rungs")
        pool += [r for r in searched if (r.rung or 0) == highest]
    return pool


def _report(trials: list[FrozenTrial], config: SearchEvalConfig, objective, scorer: Scorer, out: Path,
            say: Callable[[str], None], *, pick: Pick | None = None, plan: RungPlan | None = None,
            sampler: str = "gp", tracker: StepCount | None = None) -> dict[str, Any] | None:
    """Score the searched recipe, λ = 0 and every uniform λ on the search's items and on the held-out ones (and,
    for the labelled upper bound, every trial that reached the last rung); write the per-item outcomes to
    heldout.json (anyone can recompute the figures from it)."""
    from graft.core.recipe import Coefficients

    from .outputs import best_uniform_of, json_text, write_search_file
    from .report import build_report

    if not hasattr(scorer, "items"):
        say("the scorer gives no per-item outcomes: no in-sample / held-out report")
        return None
    recs = records(trials)
    top = plan.top if plan is not None else 0
    searched = pick.searched if pick is not None else None
    chosen = [("searched", searched)] if searched is not None else []
    chosen += [(r.baseline, r) for r in recs if r.baseline and r.rated]
    uniform = pick.uniform if pick is not None else best_uniform_of(recs, objective)
    if not chosen:
        return None
    parts = ["search", "heldout"] if config.holdout > 0 else ["search"]
    candidates = []
    if config.selection.upper_bound != "none" and config.holdout > 0:
        # The trials the held-out part could rank first: by default the finalists and every trial of the study's
        # front on the rung pool (safety, medical, over-refusal); scoring every trial there costs as much again as
        # the trials did on the rung pool.
        taken = {r.number for _, r in chosen}
        pool = [r for r in candidates_of(recs, top) if r.baseline is None]
        wanted = {r.number for r in pool} if config.selection.upper_bound == "all" else \
            {*(pick.finalists if pick is not None else []), *(r.number for r in front(pool))}
        candidates = [(f"trial_{r.number}", r) for r in pool if r.number in wanted and r.number not in taken]
    if tracker is not None:
        tracker.final_phase(report=len(chosen) + len(candidates))
    say(f"report: scoring {len(chosen)} recipes on the search's items"
        + (" and on the held-out ones" if len(parts) == 2 else " (nothing held out)")
        + (f", and {len(candidates)} more trials on both for the labelled upper bound" if candidates else ""))
    models: dict[str, dict[str, Any]] = {}
    for label, r in [*chosen, *candidates]:
        c = Coefficients.model_validate(r.coefficients)
        entry: dict[str, Any] = {"trial": r.number, "baseline": r.baseline, "operator": r.operator,
                                 "coefficients": r.coefficients}
        for part in parts:
            extra = {} if r.operator is None else {"operator": r.operator}
            entry["in_sample" if part == "search" else "held_out"] = scorer.items(  # type: ignore[attr-defined]
                c, config.report_stage(part), **extra)
        models[label] = entry
        if tracker is not None:
            tracker.rescored()
    report = build_report(models, config, searched="searched" if searched is not None else None,
                          best_uniform=uniform.baseline if uniform is not None else None,
                          candidates=[label for label, _ in candidates], sampler=sampler)
    report["best_uniform"] = uniform.baseline if uniform is not None else None
    selection = None
    lambda0 = next((r for _, r in chosen if r.baseline == "lambda0"), None)
    if config.selection.share > 0 and lambda0 is not None:  # which in-sample items no trial was scored on
        extra = {} if lambda0.operator is None else {"operator": lambda0.operator}
        picked = scorer.items(Coefficients.model_validate(lambda0.coefficients),  # type: ignore[attr-defined]
                              config.selection_stage(), **extra)
        selection = {task: sorted(ids) for task, ids in picked.items()}
    write_search_file(out / HELD_OUT_FILE, json_text({"split": report["split"], "selection_items": selection,
                                                     "models": models}))
    return report


def _work(study, storage, space: SearchSpace, config: SearchEvalConfig, sampler: str, num_layers: int,
          lambda0: Baseline, trials: int, trial_scorer: Scorer, say: Callable[[str], None],
          hooks: Sequence[TrialCallback] = (), *, plan: RungPlan | None = None, budget_items: int | None = None,
          notes: Notes | None = None) -> list[int]:
    from .bounds import composite

    plan = plan or RungPlan(1, config.fidelity.reduction)
    extra = {"operator": lambda0.params[OPERATOR_PARAM]} if OPERATOR_PARAM in lambda0.params else {}
    say("scoring the target itself (λ = 0) on the rung pool: every trial's constraints are paired with it")
    reference, _ = outcomes_of(trial_scorer, space.coefficients(lambda0.params, num_layers),
                               config.rung_stage(plan.top, plan), extra)
    if study.user_attrs.get(REFERENCE_KEY) is None:
        study.set_user_attr(REFERENCE_KEY, composite(reference, config.medical))
    breaks = target_breaks_a_cap(judge_trial(reference, reference, config), config)
    if breaks and notes is not None:
        notes.warn(breaks)

    def incumbent() -> float | None:
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        values = [t.user_attrs["screening"] for t in done if t.user_attrs.get("screening") is not None]
        return max(values) if values else None

    objective = TrialObjective(space, config, trial_scorer, num_layers=num_layers, reference=reference,
                               sampler=sampler, incumbent=incumbent, plan=plan)
    report = run_worker(study, storage, objective, trials, poll_s=min(1.0, storage.heartbeat_interval or 1),
                        on_trial=lambda t: _finished(study, t, say, hooks, config.objective, plan.top),
                        record_constraints=config.objective.mode == "constrained", budget_items=budget_items)
    return report.ran


def _finished(study, trial: FrozenTrial, say: Callable[[str], None], hooks: Sequence[TrialCallback],
              objective, top: int = 0) -> None:
    say(_describe(trial))
    say(standing(study.get_trials(deepcopy=False), objective, top))
    for hook in hooks:
        hook(study, trial)


def standing(trials: list[FrozenTrial], objective, top: int = 0) -> str:
    """The running best feasible searched trial beside the best uniform λ so far, among the trials scored on the
    whole rung pool (in sample: the scores the search chooses on), as one line."""
    from .outputs import best_of, best_uniform_of

    recs = [r for r in records(trials) if r.reached(top)]
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
    where = f", rung {a['rung']}" if a.get("rung") is not None else ""
    items = f" ({a['items']} items)" if a.get("items") is not None else ""
    stopped = "; no further rung" if a.get("stopped") else ""
    bound = a.get("medical_drop_bound")
    bound_text = f", bound {bound:+.4f}" if bound is not None else ""
    return (f"{name}: safety {a.get('safety', float('nan')):.4f}, medical {a.get('medical', float('nan')):.4f} "
            f"(drop {a.get('medical_drop', float('nan')):+.4f}{bound_text}){where}{items}{stopped}, "
            f"{a.get('seconds', 0):.1f} s")


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
