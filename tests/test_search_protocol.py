"""The search protocol's pure parts against independent computations: paired bounds (against numpy and a paired
bootstrap), the stratified order and the portions of the search part (hypothesis properties: nested rungs, a
disjoint selection part, every prefix stratified), the rung plan and its one-line refusals, successive halving's
promotion key, the final pick's rule, the boundary check and the warnings."""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graft.errors import UsageError
from graft.evals.loaders import Item
from graft.evals.screening import Split
from graft.search.advice import delta_resolution, target_breaks_a_cap
from graft.search.bounds import judge, paired_difference, z_of
from graft.search.config import SearchEvalConfig
from graft.search.fidelity import Portion, RungPlan, check_budget, plan_rungs, promotion_key, stratified_order
from graft.search.outputs import TrialRecord
from graft.search.pick import boundary, finalists, front, pick_on
from graft.search.space import SearchSpace

SEEDED = settings(derandomize=True, max_examples=40, deadline=None)


def config(**changes) -> SearchEvalConfig:
    data = {"graft_search_eval": 1, "data": "data.yaml", "safety": ["catqa", "hexphi"],
            "medical": ["pubmedqa", "medqa"], "over_refusal": True, **changes}
    return SearchEvalConfig.parse(data)


# -- paired bounds --------------------------------------------------------------------------------------------------
def test_paired_difference_is_the_mean_of_task_means_with_the_plug_in_standard_error() -> None:
    rng = np.random.default_rng(0)
    a = {"t1": {f"i{k}": float(v) for k, v in enumerate(rng.random(40) < 0.6)},
         "t2": {f"j{k}": float(v) for k, v in enumerate(rng.random(25) < 0.3)}}
    b = {t: {i: (1.0 - v if rng.random() < 0.15 else v) for i, v in items.items()} for t, items in a.items()}
    got = paired_difference(a, b, ["t1", "t2"])
    d1 = np.array([a["t1"][i] - b["t1"][i] for i in sorted(a["t1"])])
    d2 = np.array([a["t2"][i] - b["t2"][i] for i in sorted(a["t2"])])
    assert got.value == pytest.approx((d1.mean() + d2.mean()) / 2)
    assert got.se == pytest.approx(math.sqrt(d1.var() / d1.size + d2.var() / d2.size) / 2)
    assert got.n == 65
    # The bootstrap that resamples items within each task, paired, agrees with the analytic standard error.
    boot = np.random.default_rng(1)
    draws = [(d1[boot.integers(0, d1.size, d1.size)].mean() + d2[boot.integers(0, d2.size, d2.size)].mean()) / 2
             for _ in range(4000)]
    assert np.std(draws) == pytest.approx(got.se, rel=0.08)
    assert got.upper(z_of(0.8)) == pytest.approx(got.value + NormalDist().inv_cdf(0.8) * got.se)


def test_paired_difference_pairs_only_shared_items_and_is_zero_for_an_unchanged_model() -> None:
    a = {"t": {"x": 1.0, "y": 0.0, "z": 1.0}}
    assert paired_difference(a, a, ["t"]).se == 0.0 and paired_difference(a, a, ["t"]).value == 0.0
    b = {"t": {"x": 0.0, "w": 1.0}}  # one shared item
    assert paired_difference(a, b, ["t"]).value == 1.0 and paired_difference(a, b, ["t"]).n == 1
    assert paired_difference(a, {"u": {"x": 1.0}}, ["t"]) is None
    assert z_of(0.5) == 0.0


def test_judge_bounds_each_constraint_paired_with_the_reference() -> None:
    n = 20
    ref = {"catqa": {f"c{k}": 0.0 for k in range(n)}, "hexphi": {f"h{k}": 0.0 for k in range(n)},
           "pubmedqa": {f"p{k}": float(k < 12) for k in range(n)}, "medqa": {f"m{k}": float(k < 10) for k in range(n)},
           "benign": {f"b{k}": 1.0 for k in range(n)}}
    trial = {t: dict(v) for t, v in ref.items()}
    trial["catqa"].update({f"c{k}": 1.0 for k in range(10)})  # 50 % safe now
    trial["pubmedqa"]["p0"] = 0.0  # one medical item lost
    trial["benign"].update({"b0": 0.0, "b1": 0.0})  # refuses 2 benign prompts of 20
    z = z_of(0.8)
    j = judge(trial, ref, safety=["catqa", "hexphi"], medical=["pubmedqa", "medqa"], benign=["benign"], z=z)
    assert j.safety == pytest.approx(0.25) and j.medical == pytest.approx((11 / 20 + 10 / 20) / 2)
    # drop: mean over 2 tasks of (1/20, 0); se = sqrt(var/n)/2 with var of one 1 among 20 (ddof 0).
    p = 1 / n
    assert j.medical_drop.value == pytest.approx(p / 2)
    assert j.medical_drop.se == pytest.approx(math.sqrt(p * (1 - p) / n) / 2)
    assert j.medical_drop_bound == pytest.approx(p / 2 + z * math.sqrt(p * (1 - p) / n) / 2)
    q = 2 / n  # over-refusal 10 %, its paired increase over the reference (which refused none)
    assert j.over_refusal == pytest.approx(q)
    assert j.over_refusal_bound == pytest.approx(q + z * math.sqrt(q * (1 - q) / n))
    assert j.safety_loss.value == pytest.approx(-0.25)  # safer than the target: a negative loss
    assert j.items == 5 * n


def test_a_trial_stopped_on_a_lower_rung_is_judged_as_if_on_the_whole_pool() -> None:
    rng = np.random.default_rng(2)
    ref = {"catqa": {f"c{k}": 0.0 for k in range(30)}, "hexphi": {f"h{k}": 0.0 for k in range(30)},
           "pubmedqa": {f"p{k}": float(rng.random() < 0.6) for k in range(30)},
           "medqa": {f"m{k}": float(rng.random() < 0.5) for k in range(30)},
           "benign": {f"b{k}": 1.0 for k in range(30)}}
    trial = {t: {i: (1.0 - v if rng.random() < 0.2 else v) for i, v in items.items()} for t, items in ref.items()}
    z = z_of(0.8)
    j = judge(trial, ref, safety=["catqa", "hexphi"], medical=["pubmedqa", "medqa"], benign=["benign"], z=z)
    p = j.projected(math.sqrt(1 / 3))  # a rung of a third of the pool
    assert p.medical_drop.value == j.medical_drop.value and p.over_refusal == j.over_refusal
    assert p.medical_drop_bound == pytest.approx(j.medical_drop.value + z * j.medical_drop.se / math.sqrt(3))
    point, se = j.refusals["benign"]
    assert p.over_refusal_bound == pytest.approx(point + z * se / math.sqrt(3))
    assert p.safety_loss_bound == pytest.approx(j.safety_loss.value + z * j.safety_loss.se / math.sqrt(3))


# -- the stratified order and the portions ---------------------------------------------------------------------------
def make_items(sizes: list[int], benchmark: str = "b") -> list[Item]:
    return [Item(benchmark, f"{benchmark}-{c}-{k}", f"cat{c}", f"prompt {c} {k}")
            for c, n in enumerate(sizes) for k in range(n)]


@SEEDED
@given(st.lists(st.integers(1, 30), min_size=1, max_size=5), st.integers(0, 3))
def test_every_prefix_of_the_stratified_order_keeps_each_categorys_share(sizes: list[int], seed: int) -> None:
    items = make_items(sizes)
    order = stratified_order(items, seed)
    assert sorted(i.id for i in order) == sorted(i.id for i in items) and order == stratified_order(items, seed)
    total = len(items)
    for m in range(1, total + 1):
        prefix = order[:m]
        for c, n in enumerate(sizes):
            got = sum(i.category == f"cat{c}" for i in prefix)
            assert abs(got - m * n / total) <= 1.0 + 1e-9


def test_a_category_added_never_changes_another_categorys_order() -> None:
    one = [i.id for i in stratified_order(make_items([10, 8]), 0) if i.category == "cat0"]
    two = [i.id for i in stratified_order(make_items([10, 8, 12]), 0) if i.category == "cat0"]
    assert one == two


@SEEDED
@given(st.lists(st.integers(2, 40), min_size=1, max_size=4), st.sampled_from([0.0, 0.25, 0.4]),
       st.sampled_from([None, 5, 12]), st.integers(2, 4), st.integers(1, 4))
def test_rungs_are_nested_prefixes_and_the_selection_part_is_apart(sizes, share, limit, reduction, count) -> None:
    items = make_items(sizes)
    split = Split(0.5, 3, "search")
    plan = RungPlan(count, reduction)
    rungs = [Portion(split, share, "pool", plan.share(r), limit=limit, seed=1).apply(items) for r in range(count)]
    selection = Portion(split, share, "selection", limit=limit, seed=1).apply(items)
    search = Portion(split, share, "search", limit=limit, seed=1).apply(items)
    held = {i.id for i in Split(0.5, 3, "heldout").apply(items)}
    ids = [[i.id for i in r] for r in rungs]
    for small, large in itertools.pairwise(ids):
        assert large[: len(small)] == small  # a promotion adds items, never swaps them
    pool = set(ids[-1])
    assert not pool & {i.id for i in selection} and not (pool | {i.id for i in selection}) & held
    assert {i.id for i in search} == pool | {i.id for i in selection}
    if limit is not None:
        assert len(pool) <= limit and len(selection) <= limit
    if share == 0:
        assert selection == []


# -- the rung plan --------------------------------------------------------------------------------------------------
FIGURES = {"safety": ["catqa"], "medical": ["pubmedqa", "medqa"], "benign": ["benign"]}


def test_auto_rungs_take_as_many_as_leave_every_figure_its_minimum() -> None:
    pool = {"catqa": 90, "pubmedqa": 60, "medqa": 60, "benign": 45}
    # η = 3: smallest rung of 3 rungs reads 1/9: benign 5 → ok with min 5; 4 rungs (1/27): benign 2 → too few.
    assert plan_rungs("auto", 3, 5, pool, FIGURES).count == 3
    assert plan_rungs("auto", 3, 6, pool, FIGURES).count == 2
    assert plan_rungs("auto", 3, 5, None, FIGURES).count == 1  # a scorer that cannot count: one rung
    assert plan_rungs("auto", 3, 5, pool, FIGURES, multi_fidelity=False).count == 1
    plan = RungPlan(3, 3)
    assert plan.items(pool, 0) == {"catqa": 10, "pubmedqa": 7, "medqa": 7, "benign": 5}
    assert plan.items(pool, 2) == pool and [plan.step(r) for r in range(3)] == [1, 3, 9]


def test_rungs_that_do_not_fit_the_items_are_a_one_line_usage_error_naming_the_field() -> None:
    pool = {"catqa": 90, "pubmedqa": 60, "medqa": 60, "benign": 45}
    with pytest.raises(UsageError, match=r"eval.yaml: fidelity.rungs: 4 rungs of reduction 3 leave benign 2 "
                                         r"item\(s\) on the smallest rung \(of 45 in the rung pool; min_items 5\); "
                                         r"at most 3 fit"):
        plan_rungs(4, 3, 5, pool, FIGURES, source="eval.yaml")
    with pytest.raises(UsageError, match=r"fidelity\.rungs: 2 rungs need one objective"):
        plan_rungs(2, 3, 5, pool, FIGURES, multi_fidelity=False)
    assert plan_rungs(3, 3, 5, pool, FIGURES).count == 3
    # A rung that adds no item to some figure is no rung: 4 benign items give 1, 1 and 4 on three rungs of 3.
    with pytest.raises(UsageError, match=r"give benign no more items on rung 1 than on rung 0 \(the rung pool "
                                         r"holds 4\); at most 2 fit"):
        plan_rungs(3, 3, 1, {**pool, "benign": 4}, FIGURES)


def test_a_budget_smaller_than_the_baselines_and_one_rung_is_refused() -> None:
    pool = {"catqa": 90, "pubmedqa": 60, "medqa": 60, "benign": 45}
    plan = RungPlan(2, 3)
    needed = 5 * 255 + (30 + 20 + 20 + 15)
    check_budget(needed, pool, plan, 5)
    with pytest.raises(UsageError, match=f"--budget-items {needed - 1}: .* give at least {needed}"):
        check_budget(needed - 1, pool, plan, 5)
    with pytest.raises(UsageError, match="--budget-items counts item evaluations"):
        check_budget(10**6, None, plan, 5)


def test_promotion_key_ranks_every_plausibly_feasible_trial_above_the_rest() -> None:
    assert promotion_key(0.3, None, True, "constrained") > promotion_key(0.9, None, False, "constrained")
    assert promotion_key(0.5, None, True, "constrained") == 0.5
    assert promotion_key(0.5, 0.7, True, "weighted") == 0.7


# -- the final pick, the edge of the space, the warnings ------------------------------------------------------------
def record(number: int, safety: float, drop_bound: float, *, baseline: str | None = None, medical: float = 0.5,
           params: dict | None = None, rung: int = 1) -> TrialRecord:
    return TrialRecord(number=number, state="COMPLETE", baseline=baseline, coefficients={}, params=params or {},
                       values=[safety], safety=safety, medical=medical, medical_drop=0.0, over_refusal=None,
                       screening=None, medical_drop_bound=drop_bound, rung=rung)


def test_finalists_are_the_best_searched_trials_by_their_bounds_and_the_pick_is_made_on_the_search_part() -> None:
    from graft.search.bounds import Judged, Paired

    objective = config().objective  # δ = 0.02
    pool = [record(0, 0.0, 0.0, baseline="lambda0"), record(1, 0.6, 0.01, baseline="uniform_1"),
            record(2, 0.9, 0.03), record(3, 0.8, 0.015), record(4, 0.7, 0.0), record(5, 0.75, 0.019),
            record(6, 0.95, 0.0, rung=0)]
    assert [r.number for r in finalists([r for r in pool if r.reached(1)], objective, 2)] == [3, 5]

    def judged(safety: float, bound: float) -> Judged:
        return Judged({}, safety, 0.5, Paired(bound, 0.0, 100), {}, None, 0.84, 100)

    # Re-scored on the whole search part, trial 3's drop bound grows over δ: trial 5 is the pick.
    rescored = {0: judged(0.0, 0.0), 1: judged(0.6, 0.0), 3: judged(0.8, 0.03), 5: judged(0.74, 0.01)}
    pick = pick_on([r for r in pool if r.reached(1)], rescored, objective, "gp", 2)
    assert pick.searched.number == 5 and pick.uniform.number == 1 and pick.best.number == 5
    assert pick.finalists == [3, 5] and pick.rule == "search part"
    plain = pick_on([r for r in pool if r.reached(1)], None, objective, "gp", 2)
    assert plain.searched.number == 3 and plain.rule == "rung pool"


def test_a_pick_on_an_upper_bound_names_the_parameter_and_the_field_to_widen() -> None:
    space = SearchSpace.parse({"graft_space": 1, "depth": {"kind": "control_points", "count": 2, "low": 0.0,
                                                           "high": 2.0},
                               "groups": {"attn": {"low": 0.0, "high": 2.0}, "mlp": {"low": 0.5, "high": 1.5}}})
    pick = record(9, 0.9, 0.0, params={"point_0": 1.0, "point_1": 1.999, "group_attn": 0.0, "group_mlp": 0.5})
    other = record(8, 0.8, 0.0, params={"point_0": 1.0, "point_1": 2.0, "group_attn": 1.0, "group_mlp": 1.0})
    edges = boundary(pick, [other], space, num_layers=4)
    assert [(e.param, e.side, e.field, e.among_finalists) for e in edges] == [
        ("point_1", "upper", "depth.high", 1), ("group_mlp", "lower", "groups.mlp.low", 0)]
    assert "widen depth.high in space.yaml (e.g. to 4)" in edges[0].text("space.yaml")  # attn at 0: a natural end


def test_delta_in_items_and_the_resolution_warning_by_hand() -> None:
    cfg = config(objective={"max_medical_drop": 0.011, "confidence": 0.8, "max_over_refusal": 0.1})
    pool = {"pubmedqa": 24, "medqa": 24, "catqa": 18, "benign": 18}
    got = delta_resolution(cfg, pool, RungPlan(2, 3))
    step = 1 / 48
    one = step + z_of(0.8) * math.sqrt((1 / 24) * (23 / 24) / 24) / 2
    assert got["items"] == pytest.approx(0.011 / step) and got["one_item_bound"] == pytest.approx(one)
    assert got["below_resolution"] and "only trials that lose no medical item pass" in got["warning"]
    # ρ = 0.1 on 18 benign items at 0.8: 1 refusal (5.6 % + 0.84 × 5.4 = 10.1 %) is already over; 0 pass.
    assert got["refusals_allowed"] == {"benign": [0, 18]}
    assert "ρ = 0.1 is below what the rung pool resolves on benign" in got["over_refusal_warning"]
    assert delta_resolution(cfg, {**pool, "benign": 100}, RungPlan(2, 3))["refusals_allowed"] == {"benign": [7, 100]}
    wide = delta_resolution(config(objective={"max_medical_drop": 0.05}), pool, RungPlan(2, 3))
    assert not wide["below_resolution"] and wide["warning"] is None
    assert delta_resolution(config(objective={"mode": "pareto"}), pool, RungPlan(1, 3)) is None


def test_a_target_over_the_cap_is_said_with_both_ways_out() -> None:
    cfg = config(objective={"max_over_refusal": 0.1})
    ref = {"catqa": {"a": 1.0}, "hexphi": {"b": 0.0}, "pubmedqa": {"c": 1.0}, "medqa": {"d": 1.0},
           "benign": {f"x{k}": float(k >= 3) for k in range(9)}}
    j = judge(ref, ref, safety=cfg.safety, medical=cfg.medical, benign=cfg.benign_tasks(), z=z_of(0.8))
    text = target_breaks_a_cap(j, cfg)
    assert "refuses 33.3 % of benign prompts" in text and "--max-over-refusal above 0.33" in text
    assert "--keep-target-safety" in text
    assert target_breaks_a_cap(j, config(objective={"max_over_refusal": 0.4})) is None


@pytest.mark.parametrize(("value", "message"), [
    (1.0, "objective.confidence: "), (0.0, "objective.confidence: "), (-0.2, "objective.confidence: ")])
def test_a_confidence_outside_zero_one_is_a_usage_error_naming_the_field(value: float, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        config(objective={"confidence": value})
    with pytest.raises(UsageError, match=r"command-line options: objective\.confidence"):
        config().with_objective(confidence=value)


def test_the_upper_bounds_candidates_are_the_trials_no_other_beats_on_all_three_figures() -> None:
    def trial(number, safety, medical, over):
        return TrialRecord(number=number, state="COMPLETE", baseline=None, coefficients={}, params={},
                           values=[safety], safety=safety, medical=medical, medical_drop=0.0, over_refusal=over,
                           screening=None)

    trials = [trial(0, 0.9, 0.5, 0.2), trial(1, 0.8, 0.6, 0.0), trial(2, 0.8, 0.5, 0.1),  # 2: beaten by 1
              trial(3, 0.9, 0.5, 0.2), trial(4, 0.5, 0.7, 0.3)]  # 3: a copy of 0 (the earlier one stays)
    brute = [t.number for t in trials if not any(
        (o.safety, o.medical, -o.over_refusal) >= (t.safety, t.medical, -t.over_refusal) and
        all(a >= b for a, b in zip((o.safety, o.medical, -o.over_refusal), (t.safety, t.medical, -t.over_refusal),
                                   strict=True)) and ((o.safety, o.medical, o.over_refusal) != (t.safety, t.medical,
                                                                                              t.over_refusal)
                                                      or o.number < t.number) for o in trials)]
    assert [t.number for t in front(trials)] == brute == [0, 1, 4]
