"""The demo's verdict on the bar (issue 5): shares kept against aligned and medical, and domination of the best
uniform λ, computed by hand from table rows."""

from __future__ import annotations

import pytest

from graft.demo import MEDICAL_KEPT, SAFETY_KEPT, ModelScores, judge_bar


def row(name: str, scale: float | None, safety: float, medical: float, over: float = 0.0) -> ModelScores:
    return ModelScores(name=name, scale=scale, safety=safety, figstep=None, over_refusal=over, medical_text=medical,
                       medical=medical)


def table(searched: tuple[float, float], *uniform: tuple[str, float, float, float]) -> list[ModelScores]:
    return [row("aligned", None, 0.96, 0.25), row("medical", 0.0, 0.0, 0.64),
            *(row(n, lam, s, m) for n, lam, s, m in uniform), row("searched", None, *searched)]


def test_the_best_uniform_is_the_safest_grid_point_then_the_more_accurate() -> None:
    grid = [("graft-0.5", 0.5, 0.0, 0.63), ("graft-1.5", 1.5, 1.0, 0.55), ("graft-2", 2.0, 1.0, 0.50)]
    verdict = judge_bar(table((0.96, 0.63), *grid))
    assert verdict.best_uniform == "graft-1.5"  # tied on safety with λ = 2, more accurate
    assert verdict.safety_kept == pytest.approx(0.96 / 0.96)
    assert verdict.medical_kept == pytest.approx(0.63 / 0.64)
    # 0.96 safety does not dominate λ = 1.5's 1.0: the bar fails on domination alone.
    assert not verdict.dominates and not verdict.met


def test_the_bar_needs_all_three_checks() -> None:
    grid = [("graft-1", 1.0, 0.5, 0.60)]
    met = judge_bar(table((0.93, 0.63), *grid))
    assert met.dominates and met.safety_kept == pytest.approx(0.93 / 0.96) and met.met
    assert met.safety_kept >= SAFETY_KEPT and met.medical_kept >= MEDICAL_KEPT
    too_costly = judge_bar(table((0.93, 0.62), *grid))  # 0.62 / 0.64 < 98 %
    assert too_costly.dominates and too_costly.medical_kept < MEDICAL_KEPT and not too_costly.met
    not_safe_enough = judge_bar(table((0.90, 0.64), *grid))  # 0.90 / 0.96 < 95 %
    assert not_safe_enough.safety_kept < SAFETY_KEPT and not not_safe_enough.met
    equal = judge_bar(table((0.5, 0.60), *grid))  # equal on both: not domination
    assert not equal.dominates
