"""A search's progress in steps, so that its ETA covers the whole run: each finished trial of the study is a step,
and so is each recipe the final pick and the held-out report score again (each about a trial's work: the finalists
and baselines on the whole search part, then the chosen recipes on the search and held-out parts). Until that
final phase begins its size is estimated from eval.yaml; then it is exact."""

from __future__ import annotations

from collections.abc import Callable

from .config import SearchEvalConfig


def final_phase_estimate(config: SearchEvalConfig, baselines: int, *, per_item: bool = True) -> tuple[int, int]:
    """(final pick, report) recipes scored again, as eval.yaml and the baselines predict them: the pick scores the
    finalists, the baselines and λ = 0 once more as its reference; the report the pick and the baselines, plus
    about as many candidates as finalists for the labelled upper bound. None without per-item outcomes."""
    if not per_item:
        return 0, 0
    k = config.selection.finalists
    pick = k + baselines + 1 if config.selection.share > 0 else 0
    upper = k if config.selection.upper_bound != "none" and config.holdout > 0 else 0
    return pick, 1 + baselines + upper


class StepCount:
    """Calls `report(done, total)` as trials finish and recipes are scored again; nothing without `report` or
    without a trial budget (a search bounded by items only counts items)."""

    def __init__(self, report: Callable[[int, int], None] | None, trial_cap: int | None,
                 estimate: tuple[int, int]) -> None:
        self.report, self.cap = report, trial_cap
        self.pick, self.report_recipes = estimate
        self.finished = self.scored_again = 0

    def trials(self, finished: int) -> None:
        self.finished = finished
        self._emit()

    def final_phase(self, *, pick: int | None = None, report: int | None = None) -> None:
        """The exact size of a part of the final phase, once known."""
        if pick is not None:
            self.pick = pick
        if report is not None:
            self.report_recipes = report
        self._emit()

    def rescored(self) -> None:
        self.scored_again += 1
        self._emit()

    def _emit(self) -> None:
        if self.report is None or self.cap is None:
            return
        trials = max(self.cap, self.finished)
        total = trials + max(self.pick + self.report_recipes, self.scored_again)
        self.report(min(self.finished, trials) + self.scored_again, total)
