"""The real scorer of a search: set the resident model's weights to θ + λ·τ in place (no disk I/O), then run
the evaluation suite on it. Verdicts are cached per item under a key derived from the trial's recipe, so a
repeated point (a retried trial, a baseline met again, the λ = 0 reference) costs nothing the second time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from graft.core.operators import OperatorSpec
from graft.core.recipe import Coefficients, Recipe
from graft.errors import IncompatibleError, UsageError
from graft.evals.benchmarks import TASKS

from .config import SearchEvalConfig, Stage

Operator = str | dict[str, Any] | None  # a trial's operator: a name, {name: NAME, PARAM: value, ...}, or None


def trial_recipe(base: Recipe, coefficients: Coefficients, operator: Operator = None) -> Recipe:
    """The recipe a trial stands for: the base recipe (target, vector, mapping, options) with its coefficients and
    its operator (None leaves the base recipe's). The operator is read by graft.core.operators, the one seam both
    engines share, so nothing here knows what any operator does."""
    recipe = base.model_copy(update={"coefficients": coefficients, "out": None})
    if operator is None:
        return recipe
    try:
        spec = OperatorSpec.parse(operator)
    except ValueError as exc:
        raise UsageError(f"operator {operator!r}: {exc}") from None
    return recipe.with_operator(spec)


def check_operators(base: Recipe, operators: Iterable[str | OperatorSpec]) -> None:
    """Fail before any trial when an operator cannot run on this base recipe (one that uses the origin without
    one)."""
    specs = [OperatorSpec.parse(op) for op in operators] or [base.operator_spec]
    needs = [spec.name for spec in specs if spec.uses_origin]
    if needs and not base.options.origin:
        raise UsageError(f"operator {needs[0]} uses the target's own update (target − origin): give the origin "
                         "(--origin, or the recipe's options.origin: the model the target was fine-tuned from)")


def recipe_key(base: Recipe, coefficients: Coefficients, *, engine: str = "", operator: Operator = None) -> str:
    """Identity of the weights a trial evaluates (plus where and how they run, which can change replies). A recipe
    without an operator key hashes as it did before the key existed, so earlier verdict caches stay valid."""
    data = trial_recipe(base, coefficients, operator).model_dump(mode="json")
    if data.get("operator") is None:
        data.pop("operator", None)
    blob = json.dumps([data, engine], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def stage_items(config: SearchEvalConfig, stage: Stage, data: Any = None) -> dict[str, list[Any]]:
    """The items of every task a stage reads, from the benchmark files alone (no model): what the rung plan and
    the budget checks are sized on. The selection is the one `graft.evals.evaluate` makes for the same
    arguments."""
    from graft.evals.benchmarks import benchmark
    from graft.evals.config import DataConfig
    from graft.evals.screening import stratified_subset

    data = data if data is not None else DataConfig.load(config.data)
    loaded: dict[str, list] = {}
    out: dict[str, list[Any]] = {}
    for tasks, limit, fraction, split in stage.batches():
        for task in tasks:
            name = TASKS[task].benchmark
            if name not in loaded:
                loaded[name] = benchmark(name).load(data.source(name))
            part = split.apply(loaded[name]) if split is not None else loaded[name]
            out[task] = stratified_subset(part, limit=limit, fraction=fraction, seed=config.seed)
    return out


def count_items(config: SearchEvalConfig, stage: Stage, data: Any = None) -> dict[str, int]:
    """Items per task a stage reads (`stage_items`, counted)."""
    return {task: len(items) for task, items in stage_items(config, stage, data).items()}


class SuiteScorer:
    """`ItemScorer` over `graft.engines.resident.ResidentGraft`s and `graft.evals.evaluate`. At most two residents,
    loaded on first use: one for operators that use the origin (its checkpoint open) and one for those that do not; a
    trial with another operator than the resident's last recomputes its effective τ in place
    (`ResidentGraft.set_operator`: one pass over the grafted tensors, no model reload)."""

    def __init__(self, config: SearchEvalConfig, base: Recipe, cache: str | Path | None, *, device: str = "auto",
                 batch_size: int | None = None, say: Any = None):
        from graft.evals.config import DataConfig

        self.config, self.base, self.cache = config, base, cache
        self.device, self.batch_size = device, batch_size
        self.say = say or (lambda _msg: None)
        self.data = DataConfig.load(config.data)
        self.judge = config.judge_config()
        self._residents: dict[bool, Any] = {}
        self._applied: dict[bool, Coefficients | None] = {}

    def _resident(self, operator: Operator) -> tuple[Any, Recipe]:
        from graft.engines.resident import ResidentGraft
        from graft.evals.generation import HFBackend

        recipe = trial_recipe(self.base, Coefficients(), operator)
        spec = recipe.operator_spec
        key = spec.uses_origin
        if key not in self._residents:
            what = f" (operator {spec.name}, with the origin)" if key else ""
            self.say(f"loading {self.base.target} with the vector resident{what} ({self.device})")
            text_only = not any(TASKS[t].needs_image for t in self.config.tasks())
            resident = ResidentGraft.from_recipe(recipe.model_copy(update={"coefficients": self.base.coefficients}),
                                                 load=HFBackend.load, device=self.device, batch_size=self.batch_size or
                                                 self.config.batch_size, text_only=text_only)
            engine = resident.engine
            needs_image = [t for t in self.config.tasks() if TASKS[t].needs_image]
            if needs_image and not engine.is_multimodal:
                resident.close()
                raise IncompatibleError(f"{self.config.data or 'eval.yaml'}: task(s) {', '.join(needs_image)} need an "
                                        f"image-text model but {engine.name} is text-only; drop them from eval.yaml")
            self._residents[key], self._applied[key] = resident, None
        resident = self._residents[key]
        if resident.operator != spec:
            self._applied[key] = None
            resident.set_operator(spec)
        return resident, recipe

    def items(self, coefficients: Coefficients, stage: Stage, *, operator: Operator = None
              ) -> dict[str, dict[str, float]]:
        """Per-item outcomes ({task: {item id: outcome}}) of the trial's weights on the stage's tasks and part."""
        from graft.evals import evaluate
        from graft.evals.scoring import item_outcome

        resident, recipe = self._resident(operator)
        key = recipe.operator_spec.uses_origin
        if coefficients != self._applied[key]:
            self._applied[key] = None  # a failed apply leaves the weights unknown
            resident.apply(coefficients)
            self._applied[key] = coefficients
        model = resident.engine.model
        tag = f"{resident.engine.device}:{next(model.parameters()).dtype}"
        cache_key = recipe_key(self.base, coefficients, engine=tag, operator=operator)
        config = self.config
        out: dict[str, dict[str, float]] = {}
        for tasks, limit, fraction, split in stage.batches():
            results = evaluate(resident.engine, tasks=list(tasks), data=self.data, limit=limit, fraction=fraction,
                               seed=config.seed, split=split, judge=self.judge, mc_mode=config.mc_mode,
                               max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                               system_prompt=config.system_prompt, cache=self.cache, cache_key=cache_key)
            for sample in results.samples:
                task = out.setdefault(sample["task"], {})
                name = str(sample["id"])
                while name in task:  # a benchmark that repeats an id: keep both items apart
                    name += "'"
                task[name] = item_outcome(TASKS[sample["task"]].kind, sample)
        return out

    def score(self, coefficients: Coefficients, stage: Stage, *, operator: Operator = None) -> dict[str, float]:
        return {task: sum(v.values()) / len(v) for task, v in
                self.items(coefficients, stage, operator=operator).items()}

    def count(self, stage: Stage) -> dict[str, int]:
        """Items per task the stage reads (nothing is evaluated)."""
        return count_items(self.config, stage, self.data)

    def close(self) -> None:
        for resident in self._residents.values():
            resident.close()
        self._residents.clear()


__all__ = ["Operator", "SuiteScorer", "check_operators", "count_items", "recipe_key", "stage_items", "trial_recipe"]
