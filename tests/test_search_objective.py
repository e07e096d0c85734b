"""Objective math against hand-computed values, screening, the trial function with an injected scorer, the eval
config's validation, and the output rules (Pareto front against brute force, best trial per mode)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from graft.errors import UsageError
from graft.recipe import Coefficients
from graft.search.config import Objective, SearchEvalConfig, Stage
from graft.search.fidelity import RungPlan
from graft.search.objective import (
    Pruned,
    TrialObjective,
    constraint_values,
    constraints_of,
    judge_trial,
    medical_drop,
    objective_values,
    screening_verdict,
)
from graft.search.outputs import TrialRecord, best_of, pareto_front
from graft.search.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DATA = str(ROOT / "graft" / "evals" / "fixtures" / "data.yaml")


def config(**changes) -> SearchEvalConfig:
    data = {"graft_search_eval": 1, "data": FIXTURE_DATA, "safety": ["catqa", "hexphi"],
            "medical": ["pubmedqa", "medqa", "medbullets4"], **changes}
    return SearchEvalConfig.parse(data)


# -- objective values ---------------------------------------------------------------------------------------------
def test_constrained_values_and_constraint_by_hand() -> None:
    o = Objective(mode="constrained", max_medical_drop=0.02, penalty=10.0)
    # reference 0.60, medical 0.55: drop 0.05, excess 0.03 over δ.
    assert medical_drop(0.55, 0.60) == pytest.approx(0.05)
    assert constraint_values(0.05, None, o) == [pytest.approx(0.03)]  # no over-refusal cap: one constraint
    assert objective_values(0.8, 0.55, [0.03], o, "tpe") == [0.8]
    assert objective_values(0.8, 0.55, [0.03], o, "cmaes") == pytest.approx([0.8 - 10 * 0.03])
    # Feasible: no penalty, constraint ≤ 0.
    assert constraint_values(medical_drop(0.59, 0.60), None, o) == [pytest.approx(-0.01)]
    assert objective_values(0.8, 0.59, [-0.01], o, "cmaes") == [0.8]
    # A medical gain is never a penalty.
    assert objective_values(0.3, 0.70, constraint_values(-0.1, None, o), o, "cmaes") == [0.3]


def test_over_refusal_cap_is_a_second_constraint_by_hand() -> None:
    o = Objective(mode="constrained", max_medical_drop=0.02, max_over_refusal=0.1, penalty=10.0)
    # drop 0.05 (0.03 over δ), over-refusal 0.25 (0.15 over ρ).
    assert constraint_values(0.05, 0.25, o) == [pytest.approx(0.03), pytest.approx(0.15)]
    assert constraint_values(0.01, 0.05, o) == [pytest.approx(-0.01), pytest.approx(-0.05)]
    assert constraint_values(0.0, None, o)[1] == pytest.approx(0.9)  # unmeasured: as if it refused everything
    # CMA-ES folds in the sum of the positive parts only.
    assert objective_values(0.9, 0.5, [0.03, 0.15], o, "cmaes") == pytest.approx([0.9 - 10 * (0.03 + 0.15)])
    assert objective_values(0.9, 0.5, [-0.01, 0.15], o, "cmaes") == pytest.approx([0.9 - 10 * 0.15])


def test_pareto_and_weighted_values_by_hand() -> None:
    assert objective_values(0.8, 0.5, [0.08], Objective(mode="pareto"), "nsga2") == [0.8, 0.5]
    assert objective_values(0.8, 0.5, [0.08], Objective(mode="weighted", weight=0.25), "tpe") == \
        pytest.approx([0.75 * 0.8 + 0.25 * 0.5])


def test_constraints_func_reads_the_trial_and_calls_unscored_trials_infeasible() -> None:
    o, capped = Objective(), Objective(max_over_refusal=0.1)
    assert constraints_of({"constraint": -0.01, "constraints": [-0.01, 0.2]}, capped) == [-0.01, 0.2]
    assert constraints_of({"constraint": -0.01}, o) == [-0.01]  # recorded before the cap existed
    # Pruned before the scores existed: infeasible, one value per constraint.
    assert constraints_of({}, o) == [1.0]
    assert constraints_of({}, capped) == [1.0, 1.0]


def test_figures_are_means_over_configured_tasks() -> None:
    cfg = config(over_refusal=True)
    scores = {"catqa": 1.0, "hexphi": 0.5, "pubmedqa": 0.3, "medqa": 0.6, "medbullets4": 0.0, "benign": 0.9}
    result = judge_trial({t: {"": v} for t, v in scores.items()}, {t: {"": 0.5} for t in scores}, cfg)
    assert result.safety == pytest.approx(0.75)
    assert result.medical == pytest.approx(0.3)
    assert result.over_refusal == pytest.approx(0.1)
    assert result.medical_drop.value == pytest.approx(0.2) and result.medical_drop.se == 0.0  # no item: no spread


def test_screening_verdicts() -> None:
    cfg = config(screening={"tasks": ["catqa"], "limit": 4, "threshold": 0.5, "below_best_by": 0.2})
    assert screening_verdict(0.4, None, cfg).startswith("screening safety 0.4000 < threshold 0.5")
    assert screening_verdict(0.6, None, cfg) is None
    assert screening_verdict(0.6, 0.79, cfg) is None
    assert "trails the best finished trial's 0.9000" in screening_verdict(0.6, 0.9, cfg)
    assert screening_verdict(0.0, None, config()) is None  # no screening section: never stops


# -- the trial function -----------------------------------------------------------------------------------------
class RecordingTrial:
    def __init__(self, number: int, values: dict[str, float], user_attrs: dict | None = None):
        self.number, self.values = number, values
        self.user_attrs = dict(user_attrs or {})

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value

    def suggest_float(self, name, low, high, *, step=None, log=False):
        return self.values[name]


class RungTrial(RecordingTrial):
    """A trial that records what it reports to the pruner and is told to stop after `stop_after` reports."""

    def __init__(self, number, values, user_attrs=None, stop_after: int | None = None):
        super().__init__(number, values, user_attrs)
        self.reported: list[tuple[float, int]] = []
        self.stop_after = stop_after

    def report(self, value, step):
        self.reported.append((value, step))

    def should_prune(self):
        return self.stop_after is not None and len(self.reported) >= self.stop_after


class ScaleScorer:
    """Safety rises with the scale, medical skill falls with its square; records every call."""

    def __init__(self):
        self.calls: list[tuple[float, str, tuple[str, ...]]] = []

    def score(self, coefficients: Coefficients, stage: Stage) -> dict[str, float]:
        self.calls.append((coefficients.scale, stage.name, stage.tasks))
        s = coefficients.scale
        return {t: (min(1.0, 0.5 * s) if t in ("catqa", "hexphi") else 0.6 - 0.1 * s * s) for t in stage.tasks}


GLOBAL = SearchSpace.parse({"graft_space": 1, "scale": {"low": 0.0, "high": 2.0}})


def test_trial_runs_screening_then_every_task_on_the_pool_and_records_everything() -> None:
    cfg = config(screening={"tasks": ["catqa"], "limit": 2, "threshold": 0.3})
    scorer = ScaleScorer()
    run = TrialObjective(GLOBAL, cfg, scorer, num_layers=4, reference=0.6, sampler="tpe")
    trial = RecordingTrial(7, {"scale": 1.0})
    assert run(trial) == [0.5]
    assert [c[1] for c in scorer.calls] == ["screening", "rung 0"]
    assert scorer.calls[1][2] == ("catqa", "hexphi", "pubmedqa", "medqa", "medbullets4")
    attrs = trial.user_attrs
    assert attrs["coefficients"] == Coefficients(scale=1.0).model_dump(mode="json")
    assert attrs["safety"] == 0.5 and attrs["medical"] == pytest.approx(0.5)
    assert attrs["medical_drop"] == pytest.approx(0.1) and attrs["constraint"] == pytest.approx(0.08)
    # A scorer without per-item outcomes has no paired spread: the bound is the point estimate.
    assert attrs["medical_drop_bound"] == pytest.approx(0.1) and attrs["items"] is None
    assert attrs["constraints"] == [pytest.approx(0.08)] and attrs["feasible"] is False
    assert attrs["rung"] == 0 and "stopped" not in attrs
    assert attrs["screening"] == 0.5 and set(attrs["scores"]) == {"catqa", "hexphi", "pubmedqa", "medqa",
                                                                    "medbullets4"}


def test_a_trial_goes_rung_after_rung_until_the_pruner_stops_it_but_baselines_run_every_rung() -> None:
    cfg = config()
    scorer = ScaleScorer()
    plan = RungPlan(3, 3)
    run = TrialObjective(GLOBAL, cfg, scorer, num_layers=4, reference=0.6, sampler="gp", plan=plan)
    trial = RungTrial(4, {"scale": 1.0}, stop_after=1)
    run(trial)
    assert [c[1] for c in scorer.calls] == ["rung 0"] and trial.user_attrs["rung"] == 0
    assert "best 1/3 of the trials that reached rung 0" in trial.user_attrs["stopped"]
    # Reported at step 1 (the smallest rung's resource): safety − 1, as the drop 0.1 is over δ even optimistically.
    assert trial.reported == [(pytest.approx(0.5 - 1.0), 1)]
    scorer.calls.clear()
    promoted = RungTrial(5, {"scale": 0.2})
    run(promoted)
    assert [c[1] for c in scorer.calls] == ["rung 0", "rung 1", "rung 2"]
    assert [step for _, step in promoted.reported] == [1, 3] and promoted.user_attrs["rung"] == 2
    scorer.calls.clear()
    baseline = RungTrial(0, {"scale": 0.0}, {"baseline": "lambda0"}, stop_after=1)
    run(baseline)  # told to stop, yet a baseline is scored on every rung (and still reports to the pruner)
    assert [c[1] for c in scorer.calls] == ["rung 0", "rung 1", "rung 2"] and len(baseline.reported) == 2


def test_hopeless_trial_stops_before_the_medical_tasks_but_baselines_never_do() -> None:
    cfg = config(screening={"tasks": ["catqa"], "limit": 2, "threshold": 0.3})
    scorer = ScaleScorer()
    run = TrialObjective(GLOBAL, cfg, scorer, num_layers=4, reference=0.6, sampler="tpe")
    trial = RecordingTrial(3, {"scale": 0.2})  # screening safety 0.1 < 0.3
    with pytest.raises(Pruned, match=r"0\.1000 < threshold 0\.3"):
        run(trial)
    assert [c[1] for c in scorer.calls] == ["screening"]
    assert trial.user_attrs["screening"] == pytest.approx(0.1) and "safety" not in trial.user_attrs
    baseline = RecordingTrial(0, {"scale": 0.0}, {"baseline": "lambda0"})
    assert run(baseline) == [0.0]  # λ = 0 screens at 0 yet is scored in full: it is the reference
    assert [c[1] for c in scorer.calls[1:]] == ["screening", "rung 0"]


def test_trial_records_the_over_refusal_constraint() -> None:
    cfg = config(over_refusal=True, objective={"max_medical_drop": 0.2, "max_over_refusal": 0.3})

    class RefusingScorer(ScaleScorer):  # refuses 0.2·scale of the benign prompts
        def score(self, coefficients, stage):
            scores = super().score(coefficients, stage)
            return {**scores, **({"benign": 1.0 - 0.2 * coefficients.scale} if "benign" in stage.tasks else {})}

    run = TrialObjective(GLOBAL, cfg, RefusingScorer(), num_layers=4, reference=0.6, sampler="cmaes")
    trial = RecordingTrial(1, {"scale": 2.0})  # safety 1.0, medical 0.2 (drop 0.4), over-refusal 0.4
    assert run(trial) == pytest.approx([1.0 - 10 * ((0.4 - 0.2) + (0.4 - 0.3))])
    attrs = trial.user_attrs
    assert attrs["over_refusal"] == pytest.approx(0.4)
    assert attrs["constraints"] == [pytest.approx(0.2), pytest.approx(0.1)] and attrs["feasible"] is False


def test_stage_batches_group_tasks_by_subset_size() -> None:
    cfg = config(limit=8, limits={"medqa": 32, "medbullets4": 32})
    batches = {tasks: (limit, fraction, split) for tasks, limit, fraction, split in cfg.stage("medical").batches()}
    assert set(batches) == {("pubmedqa",), ("medqa", "medbullets4")}
    # The caps go inside the portion of the search part (prefixes of one stratified order), not to evaluate().
    assert batches["pubmedqa",][:2] == (None, None) and batches["pubmedqa",][2].limit == 8
    assert batches["medqa", "medbullets4"][2].limit == 32 and batches["medqa", "medbullets4"][2].side == "pool"
    assert [b[0] for b in cfg.stage("safety").batches()] == [("catqa", "hexphi")]
    held = cfg.report_stage("heldout").batches()
    assert held == [(tuple(cfg.tasks()), None, None, cfg.split("heldout"))]


# -- eval config validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("changes", "message"), [
    ({"safety": ["pubmedqa"]}, "safety: pubmedqa cannot score safety"),
    ({"medical": ["catqa"]}, "medical: catqa cannot score medical skill"),
    ({"safety": ["catqa", "nope"]}, "unknown task(s) nope"),
    ({"limit": 4, "fraction": 0.5}, "give limit or fraction, not both"),
    ({"limits": {"vqarad": 3}}, "limits names vqarad"),
    ({"objective": {"mode": "lexicographic"}}, "objective.mode: must be one of 'constrained'"),
    ({"objective": {"weight": 2}}, "objective.weight: must be ≤ 1.0, got 2"),
    ({"screening": {"tasks": ["medqa"]}}, "medqa cannot score screening safety"),
    ({"judge": "gpt4"}, "judge: judge 'gpt4': expected 'keyword'"),
    ({"temperature": 0}, "temperature: unknown field"),
    ({"objective": {"max_over_refusal": 0.1}}, "objective.max_over_refusal needs over_refusal: true"),
    ({"over_refusal": True, "objective": {"max_over_refusal": 1.5}},
     "objective.max_over_refusal: must be ≤ 1.0, got 1.5"),
])
def test_eval_config_errors(changes: dict, message: str) -> None:
    with pytest.raises(UsageError) as info:
        config(**changes)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_eval_config_file_resolves_data_and_objective_overrides(tmp_path: Path) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("graft_search_eval: 1\ndata: sub/data.yaml\nsafety: [catqa]\nmedical: [medqa]\n")
    cfg = SearchEvalConfig.from_yaml(path)
    assert cfg.data == str(tmp_path / "sub" / "data.yaml")
    assert cfg.with_objective(mode="pareto", max_medical_drop=None).objective.mode == "pareto"
    with pytest.raises(UsageError, match=r"objective\.max_medical_drop"):
        cfg.with_objective(max_medical_drop=-1)
    path.write_text("data: x.yaml\n")
    with pytest.raises(UsageError, match="graft_search_eval: missing"):
        SearchEvalConfig.from_yaml(path)
    shipped = SearchEvalConfig.from_yaml(ROOT / "examples" / "search" / "eval.yaml")
    assert Path(shipped.data).resolve() == Path(FIXTURE_DATA).resolve()


# -- outputs: Pareto front and best trial -----------------------------------------------------------------------
def rec(number: int, safety: float, medical: float, *, drop: float = 0.0, value: float | None = None,
        baseline: str | None = None, state: str = "COMPLETE", over_refusal: float | None = None) -> TrialRecord:
    return TrialRecord(number, state, baseline, {"scale": 1.0}, {}, [value if value is not None else safety],
                       safety, medical, drop, over_refusal, None)


def test_pareto_front_matches_brute_force() -> None:
    rng = random.Random(3)
    recs = [rec(i, round(rng.random(), 1), round(rng.random(), 1)) for i in range(40)]
    recs.append(rec(40, 0.9, 0.9, state="PRUNED"))  # never on the front: not scored in full
    front = {r.number for r in pareto_front(recs)}
    brute = set()
    for r in recs[:40]:
        beaten = any(o.safety >= r.safety and o.medical >= r.medical and (o.safety, o.medical) != (r.safety, r.medical)
                     for o in recs[:40])
        if not beaten:
            brute.add(r.number)
    assert front == brute and front
    for a, b in itertools.combinations(pareto_front(recs), 2):
        assert not (a.safety >= b.safety and a.medical >= b.medical and (a.safety, a.medical) != (b.safety, b.medical))


def test_best_trial_rules_per_mode() -> None:
    constrained = Objective(mode="constrained", max_medical_drop=0.02)
    recs = [rec(0, 0.2, 0.6, drop=0.0, baseline="lambda0"), rec(1, 0.9, 0.5, drop=0.1),
            rec(2, 0.7, 0.59, drop=0.01), rec(3, 0.7, 0.595, drop=0.005)]
    assert best_of(recs, constrained).number == 3  # feasible, safest, then the better medical score
    assert best_of(recs[:2], constrained).number == 0  # the only feasible one
    weighted = Objective(mode="weighted", weight=0.5)
    recs_w = [rec(0, 0.2, 0.6, value=0.4), rec(1, 0.9, 0.5, value=0.7), rec(2, 0.7, 0.59, value=0.645)]
    assert best_of(recs_w, weighted).number == 1
    assert best_of([rec(0, 1.0, 1.0, state="PRUNED")], constrained) is None
    # With an over-refusal cap, a trial that refuses too many benign prompts is infeasible, however safe.
    capped = Objective(mode="constrained", max_medical_drop=0.02, max_over_refusal=0.1)
    refusing = [rec(0, 0.2, 0.6, over_refusal=0.0, baseline="lambda0"), rec(1, 1.0, 0.6, over_refusal=0.5),
                rec(2, 0.8, 0.6, over_refusal=0.1)]
    assert best_of(refusing, constrained).number == 1
    assert best_of(refusing, capped).number == 2 and refusing[1].feasible(capped) is False
    # With no feasible trial, the one that breaks its constraints least wins (as Optuna ranks infeasible trials),
    # not the safest: refusing 90 % of benign prompts is 0.8 over ρ, refusing 15 % only 0.05.
    none_feasible = [rec(1, 1.0, 0.6, over_refusal=0.9), rec(2, 0.5, 0.6, over_refusal=0.15),
                     rec(3, 0.6, 0.6, drop=0.2, over_refusal=0.0)]
    assert best_of(none_feasible, capped).number == 2
