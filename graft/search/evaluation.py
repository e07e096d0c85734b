"""The real scorer of a search: set the resident model's weights to θ + λ·τ in place (no disk I/O), then run
the evaluation suite on it. Verdicts are cached per item under a key derived from the trial's recipe, so a
repeated point (a retried trial, a baseline met again, the λ = 0 reference) costs nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from graft.errors import IncompatibleError
from graft.evals.tasks import TASKS
from graft.recipe import Coefficients, Recipe

from .config import SearchEvalConfig, Stage


def trial_recipe(base: Recipe, coefficients: Coefficients) -> Recipe:
    """The recipe a trial stands for: the base recipe (target, vector, mapping, options) with its coefficients."""
    return base.model_copy(update={"coefficients": coefficients, "out": None})


def recipe_key(base: Recipe, coefficients: Coefficients, *, engine: str = "") -> str:
    """Identity of the weights a trial evaluates (plus where and how they run, which can change replies)."""
    blob = json.dumps([trial_recipe(base, coefficients).model_dump(mode="json"), engine], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class SuiteScorer:
    """`Scorer` over a `graft.resident.ResidentGraft` and `graft.evals.evaluate`."""

    def __init__(self, resident: Any, config: SearchEvalConfig, base: Recipe, cache: str | Path | None):
        from graft.evals.config import DataConfig

        self.resident, self.config, self.base = resident, config, base
        self.cache = cache
        self.data = DataConfig.from_yaml(config.data)
        self.judge = config.judge_config()
        engine = resident.engine
        needs_image = [t for t in config.tasks() if TASKS[t].needs_image]
        if needs_image and not engine.is_multimodal:
            raise IncompatibleError(f"{config.data}: task(s) {', '.join(needs_image)} need an image-text model but "
                                    f"{engine.name} is text-only; drop them from eval.yaml")
        model = engine.model
        self._engine_tag = f"{engine.device}:{next(model.parameters()).dtype}"
        self._applied: Coefficients | None = None

    def score(self, coefficients: Coefficients, stage: Stage) -> dict[str, float]:
        from graft.evals import evaluate

        if coefficients != self._applied:
            self._applied = None  # a failed apply leaves the weights unknown
            self.resident.apply(coefficients)
            self._applied = coefficients
        key = recipe_key(self.base, coefficients, engine=self._engine_tag)
        config = self.config
        scores: dict[str, float] = {}
        for tasks, limit, fraction in stage.batches():
            results = evaluate(self.resident.engine, tasks=list(tasks), data=self.data, limit=limit,
                               fraction=fraction, seed=config.seed, judge=self.judge, mc_mode=config.mc_mode,
                               max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                               system_prompt=config.system_prompt, cache=self.cache, cache_key=key)
            scores.update({task: float(results.score(task)) for task in tasks})
        return scores


__all__ = ["SuiteScorer", "recipe_key", "trial_recipe"]
