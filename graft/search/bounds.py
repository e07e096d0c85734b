"""Constraints judged with their uncertainty. A trial's medical drop, its over-refusal and (optionally) its loss of
safety are measured as paired differences against the λ = 0 reference (the target itself) on the same items, and
each constraint is judged by a one-sided bound at the study's confidence, not by its point estimate.

Why paired: a graft changes the answer to few items, so most per-item differences are 0 and the standard error of
the difference is far below that of either score (a trial that changes no medical answer has a drop of exactly 0,
whatever the item count). Why a bound: a search keeps the best of many trials, and among trials whose true drop is
near δ the ones measured below it by luck win (the winner's curse). A trial passes only when its drop is below δ
with the stated confidence, so a trial that changes many answers needs a wider margin than one that changes few.

The standard error of a composite (mean over tasks of each task's mean) of per-item differences is the plug-in one,
√(Σ_t var_t / n_t) / T (variance with ddof 0, as `graft.evals.uncertainty.binomial_se`); the bound is value + z·SE
with z the one-sided normal quantile of the confidence ("Adding Error Bars to Evals", arXiv 2411.00640, argues for
exactly this: paired differences, with the standard error of the mean of the differences). Pure functions of
{task: {item id: outcome}}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

Outcomes = Mapping[str, Mapping[str, float]]  # task -> item id -> outcome in [0, 1]


def z_of(confidence: float) -> float:
    """The one-sided normal quantile of a confidence in (0, 1): 0.8 → 0.84, 0.5 → 0 (the point estimate)."""
    return NormalDist().inv_cdf(confidence)


@dataclass(frozen=True)
class Paired:
    """A paired difference (mean over tasks of the per-task mean of a − b on the items both hold) with its
    standard error and item count."""

    value: float
    se: float
    n: int

    def upper(self, z: float) -> float:
        return self.value + z * self.se

    def lower(self, z: float) -> float:
        return self.value - z * self.se


def paired_difference(a: Outcomes, b: Outcomes, tasks: Sequence[str]) -> Paired | None:
    """a − b over `tasks`, item by item on the items both were scored on; None when they share no item."""
    means, variances, n = [], [], 0
    for task in tasks:
        ids = sorted(set(a.get(task, {})) & set(b.get(task, {})))
        if not ids:
            continue
        diffs = [float(a[task][i]) - float(b[task][i]) for i in ids]
        mean = sum(diffs) / len(diffs)
        means.append(mean)
        variances.append(sum((d - mean) ** 2 for d in diffs) / len(diffs) / len(diffs))
        n += len(ids)
    if not means:
        return None
    return Paired(sum(means) / len(means), math.sqrt(sum(variances)) / len(means), n)


def composite(outcomes: Outcomes, tasks: Sequence[str]) -> float | None:
    """Mean over `tasks` of each task's mean outcome (each task weighs the same); None when none was scored."""
    means = [sum(outcomes[t].values()) / len(outcomes[t]) for t in tasks if outcomes.get(t)]
    return sum(means) / len(means) if means else None


@dataclass(frozen=True)
class Judged:
    """One trial's figures on one set of items, with what its constraints are judged by. Over-refusal is the
    highest share refused over the benign tasks (`refusals`: each task's share and the standard error of its
    paired increase over the reference; each task is capped). `safety_loss` is the target's safety minus the
    trial's (paired; > 0: less safe than the target). `z` is the study's one-sided quantile."""

    scores: dict[str, float]
    safety: float
    medical: float
    medical_drop: Paired
    refusals: dict[str, tuple[float, float]]
    safety_loss: Paired | None
    z: float
    items: int

    @property
    def over_refusal(self) -> float | None:
        return self.over_refusal_at(0.0)

    def over_refusal_at(self, k: float) -> float | None:
        """The highest over the benign tasks of share refused + k standard errors (None: no benign task)."""
        return max((point + k * se for point, se in self.refusals.values()), default=None)

    @property
    def medical_drop_bound(self) -> float:
        return self.medical_drop.upper(self.z)

    @property
    def over_refusal_bound(self) -> float | None:
        return self.over_refusal_at(self.z)

    @property
    def safety_loss_bound(self) -> float | None:
        return None if self.safety_loss is None else self.safety_loss.upper(self.z)

    def projected(self, factor: float) -> Judged:
        """The same figures with every standard error times `factor`: a trial judged on a rung of share s of the
        rung pool, projected to the whole pool (factor √s: a standard error shrinks as 1/√items), so its bounds
        are not more pessimistic for having seen fewer items."""
        def scale(p: Paired | None) -> Paired | None:
            return None if p is None else Paired(p.value, p.se * factor, p.n)

        return replace(self, medical_drop=scale(self.medical_drop), safety_loss=scale(self.safety_loss),
                       refusals={t: (point, se * factor) for t, (point, se) in self.refusals.items()})


def judge(trial: Outcomes, reference: Outcomes, *, safety: Sequence[str], medical: Sequence[str],
          benign: Sequence[str], z: float) -> Judged:
    """The trial's figures on its items, each constraint paired with the reference (λ = 0) on the same items."""
    scores = {t: sum(v.values()) / len(v) for t, v in trial.items() if v}
    safety_value = composite(trial, safety)
    medical_value = composite(trial, medical)
    if safety_value is None or medical_value is None:
        raise ValueError(f"a trial needs a safety and a medical score; scored: {', '.join(sorted(scores)) or 'none'}")
    drop = paired_difference(reference, trial, medical)
    if drop is None:  # no reference on these items: the unpaired difference, no spread known
        ref = composite(reference, medical)
        drop = Paired((ref if ref is not None else medical_value) - medical_value, 0.0, 0)
    refusals = {}
    for task in benign:
        if not trial.get(task):
            continue
        increase = paired_difference(reference, trial, [task])  # reference answered, trial refused: +1
        refusals[task] = (1.0 - scores[task], increase.se if increase is not None else 0.0)
    loss = paired_difference(reference, trial, safety)
    return Judged(scores, safety_value, medical_value, drop, refusals, loss, z, sum(len(v) for v in trial.values()))


__all__ = ["Judged", "Outcomes", "Paired", "composite", "judge", "paired_difference", "z_of"]
