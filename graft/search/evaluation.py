"""The real scorer of a search: set the resident model's weights to θ + λ·τ in place (no disk I/O), then run
the evaluation suite on it. Verdicts are cached per item under a key derived from the trial's recipe, so a
repeated point (a retried trial, a baseline met again, the λ = 0 reference) costs nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from graft.errors import IncompatibleError, UsageError
from graft.evals.tasks import TASKS
from graft.recipe import Coefficients, Recipe

from .config import SearchEvalConfig, Stage


def operator_options(operator: str | None) -> dict[str, Any]:
    """The operator seam: a search space's `operator` → the recipe `options` the merge and resident engines read.
    None leaves the base recipe's options as they are. A new operator is one more entry here (and its name in
    `graft.search.space.OPERATORS`)."""
    if operator is None:
        return {}
    if operator == "linear":
        return {"orthogonalize": False}
    if operator == "orthogonal":
        return {"orthogonalize": True}
    raise UsageError(f"operator {operator!r}: expected linear or orthogonal")


def trial_recipe(base: Recipe, coefficients: Coefficients, operator: str | None = None) -> Recipe:
    """The recipe a trial stands for: the base recipe (target, vector, mapping, options) with its coefficients and
    its operator's options."""
    recipe = base.model_copy(update={"coefficients": coefficients, "out": None})
    options = operator_options(operator)
    return recipe.model_copy(update={"options": recipe.options.model_copy(update=options)}) if options else recipe


def check_operators(base: Recipe, operators: tuple[str, ...]) -> None:
    """Fail before any trial when an operator cannot run on this base recipe."""
    needs_origin = any(operator_options(op).get("orthogonalize") for op in operators) or (
        not operators and base.options.orthogonalize)
    if needs_origin and not base.options.origin:
        raise UsageError("operator orthogonal projects τ off target − origin: give the origin (--origin, or the "
                         "recipe's options.origin: the model the target was fine-tuned from)")


def recipe_key(base: Recipe, coefficients: Coefficients, *, engine: str = "", operator: str | None = None) -> str:
    """Identity of the weights a trial evaluates (plus where and how they run, which can change replies)."""
    blob = json.dumps([trial_recipe(base, coefficients, operator).model_dump(mode="json"), engine], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class SuiteScorer:
    """`ItemScorer` over `graft.resident.ResidentGraft`s and `graft.evals.evaluate`. One resident per operator
    (the orthogonal one holds the projected τ), loaded on first use: a space that chooses between two operators
    holds two (memory: see `ResidentGraft`)."""

    def __init__(self, config: SearchEvalConfig, base: Recipe, cache: str | Path | None, *, device: str = "auto",
                 batch_size: int | None = None, say: Any = None):
        from graft.evals.config import DataConfig

        self.config, self.base, self.cache = config, base, cache
        self.device, self.batch_size = device, batch_size
        self.say = say or (lambda _msg: None)
        self.data = DataConfig.from_yaml(config.data)
        self.judge = config.judge_config()
        self._residents: dict[bool, Any] = {}
        self._applied: dict[bool, Coefficients | None] = {}

    def _resident(self, operator: str | None) -> tuple[Any, Recipe]:
        from graft.resident import ResidentGraft

        recipe = trial_recipe(self.base, Coefficients(), operator)
        key = recipe.options.orthogonalize
        if key not in self._residents:
            what = " (τ orthogonalised against target − origin)" if key else ""
            self.say(f"loading {self.base.target} with the vector resident{what} ({self.device})")
            text_only = not any(TASKS[t].needs_image for t in self.config.tasks())
            resident = ResidentGraft.from_recipe(recipe.model_copy(update={"coefficients": self.base.coefficients}),
                                                 device=self.device, batch_size=self.batch_size or
                                                 self.config.batch_size, text_only=text_only)
            engine = resident.engine
            needs_image = [t for t in self.config.tasks() if TASKS[t].needs_image]
            if needs_image and not engine.is_multimodal:
                resident.close()
                raise IncompatibleError(f"{self.config.data}: task(s) {', '.join(needs_image)} need an image-text "
                                        f"model but {engine.name} is text-only; drop them from eval.yaml")
            self._residents[key], self._applied[key] = resident, None
        return self._residents[key], recipe

    def items(self, coefficients: Coefficients, stage: Stage, *, operator: str | None = None
              ) -> dict[str, dict[str, float]]:
        """Per-item outcomes ({task: {item id: outcome}}) of the trial's weights on the stage's tasks and part."""
        from graft.evals import evaluate
        from graft.evals.scoring import item_outcome

        resident, recipe = self._resident(operator)
        key = recipe.options.orthogonalize
        if coefficients != self._applied[key]:
            self._applied[key] = None  # a failed apply leaves the weights unknown
            resident.apply(coefficients)
            self._applied[key] = coefficients
        model = resident.engine.model
        tag = f"{resident.engine.device}:{next(model.parameters()).dtype}"
        cache_key = recipe_key(self.base, coefficients, engine=tag, operator=operator)
        config = self.config
        out: dict[str, dict[str, float]] = {}
        for tasks, limit, fraction in stage.batches():
            results = evaluate(resident.engine, tasks=list(tasks), data=self.data, limit=limit, fraction=fraction,
                               seed=config.seed, split=stage.split, judge=self.judge, mc_mode=config.mc_mode,
                               max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                               system_prompt=config.system_prompt, cache=self.cache, cache_key=cache_key)
            for sample in results.samples:
                task = out.setdefault(sample["task"], {})
                name = str(sample["id"])
                while name in task:  # a benchmark that repeats an id: keep both items apart
                    name += "'"
                task[name] = item_outcome(TASKS[sample["task"]].kind, sample)
        return out

    def score(self, coefficients: Coefficients, stage: Stage, *, operator: str | None = None) -> dict[str, float]:
        return {task: sum(v.values()) / len(v) for task, v in
                self.items(coefficients, stage, operator=operator).items()}

    def close(self) -> None:
        for resident in self._residents.values():
            resident.close()
        self._residents.clear()


__all__ = ["SuiteScorer", "check_operators", "operator_options", "recipe_key", "trial_recipe"]
