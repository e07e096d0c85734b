"""Which items each evaluation of a search reads, and multi-fidelity trials (successive halving over rungs).

Every benchmark's search part (what `holdout` leaves to the search) is put in one seeded, category-stratified
order, and every set of items a search uses is a slice of that order:

    search part = [ rung pool ........................ | selection part ]
    rung 0      = [ first 1/η² of the pool ]                                  (η = reduction, 3 rungs here)
    rung 1      = [ first 1/η of the pool ........ ]
    rung 2      = [ the whole pool ............................ ]

* Every trial starts on rung 0; successive halving (Optuna's `SuccessiveHalvingPruner`) promotes the trials whose
  rung figures are among the best 1/η of those that reached that rung to the next, up to the whole pool. Rungs are
  prefixes, so a promotion scores only the items the rung adds (the verdict cache holds the others).
* The selection part is scored only for the finalists, after the trials: the final pick is made on items part of
  which no trial was chosen on (graft.search.pick).
* `limit`/`fraction`/`limits` cap the pool and the selection part per task (items a trial scores at most).

Rung sizes are shares of each task's pool, so they follow the benchmark sizes: `rungs: auto` takes as many rungs as
leave every figure (safety, medical, each benign task) at least `min_items` items on the smallest one.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from graft.errors import UsageError
from graft.evals.loaders import Item
from graft.evals.screening import Split

MAX_AUTO_RUNGS = 4
Side = Literal["pool", "selection", "search"]


def stratified_order(items: Sequence[Item], seed: int | str) -> list[Item]:
    """The items in a seeded order every prefix of which keeps each category's share to within one item: each
    category is shuffled on its own (seeded by seed, benchmark and category, so another category never changes its
    items' order), and the categories take turns by Balinski and Young's quota method of apportionment: position m
    goes to a category still below its quota m·n_c/N, the one with the largest n_c/(taken + 1) (ties: a seeded
    per-category priority). That method keeps every prefix within its quota for every category."""
    if not items:
        return []
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[item.category].append(item)
    queues, priority = {}, {}
    for category in sorted(groups):
        rng = random.Random(f"order-{seed}:{items[0].benchmark}:{category}")
        members = list(groups[category])
        rng.shuffle(members)
        queues[category], priority[category] = members, rng.random()
    total, taken = len(items), dict.fromkeys(queues, 0)
    order: list[Item] = []
    for m in range(1, total + 1):
        eligible = [c for c in queues if taken[c] * total < m * len(queues[c])]
        best = max(eligible, key=lambda c: (len(queues[c]) / (taken[c] + 1), priority[c], c))
        order.append(queues[best][taken[best]])
        taken[best] += 1
    return order


def capped(n: int, limit: int | None, fraction: float | None) -> int:
    """How many of `n` items a limit / fraction keeps (at least one of a non-empty set)."""
    if limit is not None:
        return min(n, limit)
    if fraction is not None:
        return min(n, max(1, round(fraction * n))) if n else 0
    return n


def selection_count(n: int, share: float) -> int:
    """Items of an n-item search part set apart for the final pick; the pool keeps at least one."""
    if share <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(share * n)))


def rung_count(n: int, share: float) -> int:
    """Items of an n-item pool a rung of `share` reads: the rounded share, at least one."""
    return min(n, max(1, round(share * n))) if n else 0


@dataclass(frozen=True)
class Portion:
    """One slice of every benchmark's search part (module docstring): the rung pool (`share` of it: a rung), the
    selection part, or both (`search`: what the final report calls in sample). Passed to `graft.evals.evaluate` as
    its `split` (it only needs `apply` and `describe`)."""

    split: Split | None  # the search part of the search/held-out split (None: every item)
    selection: float  # share of the search part set apart for the final pick
    side: Side = "pool"
    share: float = 1.0  # of the capped pool: a rung
    limit: int | None = None
    fraction: float | None = None
    seed: int = 0

    def apply(self, items: Sequence[Item]) -> list[Item]:
        part = self.split.apply(items) if self.split is not None else list(items)
        order = stratified_order(part, self.seed)
        n_selection = selection_count(len(order), self.selection)
        pool, selection = order[: len(order) - n_selection], order[len(order) - n_selection:]
        pool = pool[: capped(len(pool), self.limit, self.fraction)]
        selection = selection[: capped(len(selection), self.limit, self.fraction)]
        if self.side == "pool":
            return pool[: rung_count(len(pool), self.share)]
        if self.side == "selection":
            return selection
        return pool + selection

    def describe(self) -> dict:
        return {"split": self.split.describe() if self.split is not None else None, "selection": self.selection,
                "side": self.side, "share": self.share, "limit": self.limit, "fraction": self.fraction,
                "seed": self.seed}


@dataclass(frozen=True)
class RungPlan:
    """`count` rungs, each `reduction` times the items of the one below; the last is the whole pool."""

    count: int
    reduction: int

    def share(self, rung: int) -> float:
        return float(self.reduction) ** -(self.count - 1 - rung)

    @property
    def top(self) -> int:
        return self.count - 1

    def step(self, rung: int) -> int:
        """The rung's resource in units of the smallest rung: the step Optuna's pruner is told."""
        return self.reduction ** rung

    def items(self, pool: Mapping[str, int], rung: int) -> dict[str, int]:
        """Items per task a rung reads, from each task's pool size."""
        return {task: rung_count(n, self.share(rung)) for task, n in pool.items()}

    def smallest(self, pool: Mapping[str, int], figures: Mapping[str, Sequence[str]]) -> dict[str, int]:
        """Items per figure on the smallest rung."""
        return self.figure_items(pool, figures, 0)

    def figure_items(self, pool: Mapping[str, int], figures: Mapping[str, Sequence[str]], rung: int
                     ) -> dict[str, int]:
        on = self.items(pool, rung)
        return {name: sum(on.get(t, 0) for t in tasks) for name, tasks in figures.items()}

    def flat(self, pool: Mapping[str, int], figures: Mapping[str, Sequence[str]]) -> tuple[str, int] | None:
        """A figure that some rung gives no more items than the rung below (a rung that adds nothing), with that
        rung; None when every rung adds items to every figure."""
        for rung in range(1, self.count):
            below, here = self.figure_items(pool, figures, rung - 1), self.figure_items(pool, figures, rung)
            for name in figures:
                if here[name] <= below[name]:
                    return name, rung
        return None

    def fits(self, pool: Mapping[str, int], figures: Mapping[str, Sequence[str]], min_items: int) -> bool:
        return min(self.smallest(pool, figures).values(), default=0) >= min_items and not self.flat(pool, figures)

    def describe(self, pool: Mapping[str, int] | None) -> dict:
        return {"rungs": self.count, "reduction": self.reduction,
                "items": None if pool is None else [self.items(pool, r) for r in range(self.count)]}


def plan_rungs(rungs: int | Literal["auto"], reduction: int, min_items: int, pool: Mapping[str, int] | None,
               figures: Mapping[str, Sequence[str]], *, multi_fidelity: bool = True,
               source: str = "eval config") -> RungPlan:
    """The rungs a search runs: `auto` takes the most (up to MAX_AUTO_RUNGS) whose smallest rung leaves every
    figure `min_items` items; a number is checked the same way. `pool` (items per task in the rung pool) is None
    when the scorer cannot count items: `auto` is then one rung. `multi_fidelity` False (a Pareto study: Optuna's
    pruners rank one objective) allows one rung only."""
    if rungs != "auto" and not multi_fidelity and rungs > 1:
        raise UsageError(f"{source}: fidelity.rungs: {rungs} rungs need one objective to promote trials on; a Pareto "
                         "search ranks two (set fidelity.rungs: 1, or objective.mode constrained / weighted)")
    if not multi_fidelity or pool is None:
        return RungPlan(1 if rungs == "auto" else rungs, reduction)
    if rungs == "auto":
        count = 1
        for candidate in range(2, MAX_AUTO_RUNGS + 1):
            if RungPlan(candidate, reduction).fits(pool, figures, min_items):
                count = candidate
        return RungPlan(count, reduction)
    plan = RungPlan(rungs, reduction)
    if rungs > 1 and not plan.fits(pool, figures, min_items):
        fits = plan_rungs("auto", reduction, min_items, pool, figures).count
        advice = f"at most {fits} fit these benchmarks: lower rungs or reduction, or add items"
        short = {name: n for name, n in plan.smallest(pool, figures).items() if n < min_items}
        if short:
            name, n = min(short.items(), key=lambda kv: kv[1])
            total = sum(pool.get(t, 0) for t in figures[name])
            raise UsageError(f"{source}: fidelity.rungs: {rungs} rungs of reduction {reduction} leave {name} "
                             f"{n} item(s) on the smallest rung (of {total} in the rung pool; min_items "
                             f"{min_items}); {advice}")
        name, rung = plan.flat(pool, figures) or ("", 0)
        raise UsageError(f"{source}: fidelity.rungs: {rungs} rungs of reduction {reduction} give {name} no more "
                         f"items on rung {rung} than on rung {rung - 1} (the rung pool holds "
                         f"{sum(pool.get(t, 0) for t in figures[name])}); {advice}")
    return plan


def promotion_key(safety: float, value: float | None, plausible: bool, mode: str) -> float:
    """What successive halving ranks trials by at a rung (larger is better): the weighted value, or safety minus 1
    when a constraint is already broken with the study's confidence (so every plausibly feasible trial ranks above
    it)."""
    if mode == "weighted" and value is not None:
        return value
    return safety if plausible else safety - 1.0


def pruner(plan: RungPlan):
    """Optuna's asynchronous successive halving over the plan's rungs (`step` = the rung's resource)."""
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=plan.reduction,
                                                  min_early_stopping_rate=0)


def check_budget(budget_items: int, pool: Mapping[str, int] | None, plan: RungPlan, baselines: int) -> None:
    """Refuse an item budget the study cannot spend: the baselines run on every rung, a trial costs at least its
    first rung."""
    if budget_items < 1:
        raise UsageError(f"--budget-items {budget_items}: expected a positive number of item evaluations")
    if pool is None:
        raise UsageError("--budget-items counts item evaluations, but this scorer gives no per-item outcomes; give "
                         "--trials instead")
    full = sum(plan.items(pool, plan.top).values())
    first = sum(plan.items(pool, 0).values())
    needed = baselines * full + first
    if budget_items < needed:
        raise UsageError(f"--budget-items {budget_items}: the {baselines} baselines alone score {baselines * full} "
                         f"items (every rung, {full} a recipe) and a trial's first rung {first} more; give at least "
                         f"{needed}")


__all__ = ["MAX_AUTO_RUNGS", "Portion", "RungPlan", "capped", "check_budget", "plan_rungs", "promotion_key",
           "pruner", "rung_count", "selection_count", "stratified_order"]
