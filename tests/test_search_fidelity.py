"""Multi-fidelity trials, paired bounds, the final pick and the warnings, end to end through `run_search` and the
CLI: rungs promoted by Optuna's successive halving (checked against the rule replayed independently), the item
budget, the pick re-computed from heldout.json, the target over a cap and a pick less safe than it, a pick on the
edge of its space, one-line refusals of bad input, and a promotion scoring only the new items with the real
evaluation suite.

Scores of random tiny models mean nothing, so most runs inject a scorer: a landscape of λ item by item (each item
succeeds when its fixed draw is below the task's rate, so two close recipes agree on most items, as real ones do).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from graft.cli import app
from graft.core.recipe import Coefficients
from graft.errors import UsageError
from graft.evals.loaders import Item
from graft.evals.screening import stratified_subset
from graft.io.vector_folder import SafetyVector
from graft.search import run_search
from graft.search.bounds import judge, z_of
from graft.search.config import Objective, SearchEvalConfig, Stage
from graft.search.fidelity import RungPlan
from graft.search.pick import judged_key

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DATA = ROOT / "graft" / "evals" / "fixtures" / "data.yaml"
SPACE = ("graft_space: 1\nsampler: random\ndepth: {kind: control_points, count: 2, low: 0.0, high: 2.0}\n"
         "groups: {attn: {low: 0.0, high: 2.0}, mlp: {low: 0.0, high: 2.0}, norm: 0.0, embed: 0.0, head: 0.0}\n"
         "baselines: {uniform: [0.5, 1.0]}\n")
TASKS = ("catqa", "hexphi", "pubmedqa", "benign")
runner = CliRunner()


def draw(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") / 2**32


class Landscape:
    """Safety grows with attention λ, medical skill falls with MLP λ, benign prompts are refused as attention λ
    grows (`refusal` at λ = 0 plus `refusal_slope`·attn); 60 items a task in three categories."""

    def __init__(self, num_layers: int, *, refusal: float = 0.0, refusal_slope: float = 0.1,
                 safety0: float = 0.1):
        self.num_layers, self.refusal, self.refusal_slope, self.safety0 = num_layers, refusal, refusal_slope, safety0
        self.calls: list[tuple[str, int]] = []

    def rates(self, c: Coefficients) -> dict[str, float]:
        factors = c.layer_factors(self.num_layers)
        attn = sum(c.lam(layer, "attn", factors) for layer in range(self.num_layers)) / self.num_layers
        mlp = sum(c.lam(layer, "mlp", factors) for layer in range(self.num_layers)) / self.num_layers
        safety = min(1.0, self.safety0 + 0.45 * attn)
        return {"catqa": safety, "hexphi": safety, "pubmedqa": max(0.0, 0.7 - 0.05 * mlp * mlp - 0.01 * attn),
                "benign": 1.0 - min(1.0, self.refusal + self.refusal_slope * attn)}

    def chosen(self, stage: Stage) -> dict[str, list[Item]]:
        out = {}
        for tasks, limit, fraction, split in stage.batches():
            for task in tasks:
                items = [Item(task, f"{task}-{i:02d}", "abc"[i % 3], f"prompt {i}") for i in range(60)]
                part = split.apply(items) if split is not None else items
                out[task] = stratified_subset(part, limit=limit, fraction=fraction, seed=0)
        return out

    def items(self, c: Coefficients, stage: Stage, *, operator: str | None = None) -> dict[str, dict[str, float]]:
        rates = self.rates(c)
        chosen = self.chosen(stage)
        self.calls.append((stage.name, sum(len(v) for v in chosen.values())))
        return {task: {it.id: float(draw(it.id) < rates[task]) for it in items} for task, items in chosen.items()}

    def score(self, c: Coefficients, stage: Stage, *, operator: str | None = None) -> dict[str, float]:
        return {t: sum(v.values()) / len(v) for t, v in self.items(c, stage).items()}

    def count(self, stage: Stage) -> dict[str, int]:
        return {t: len(v) for t, v in self.chosen(stage).items()}


def eval_file(tmp_path: Path, **changes) -> Path:
    data = {"graft_search_eval": 1, "data": str(FIXTURE_DATA), "safety": ["catqa", "hexphi"],
            "medical": ["pubmedqa"], "over_refusal": True,
            "objective": {"max_medical_drop": 0.02, "max_over_refusal": 0.2}, **changes}
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def space_file(tmp_path: Path, text: str = SPACE) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def num_layers(world) -> int:
    vector = SafetyVector.open(world.vector)
    try:
        return vector.manifest.num_layers
    finally:
        vector.close()


def study_of(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="graft-search", storage=f"sqlite:///{out / 'graft.db'}")


def search(world, tmp_path: Path, scorer, **kwargs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    args = {"target": str(world.target), "vector": str(world.vector), "out": tmp_path / "out", "scorer": scorer,
            "trials": 30, "seed": 1, **kwargs}
    if "space" not in args:
        args["space"] = space_file(tmp_path)
    if "eval_config" not in args:
        args["eval_config"] = eval_file(tmp_path)
    return run_search(**args)


def test_trials_start_on_a_small_rung_and_successive_halving_promotes_the_best(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    scorer = Landscape(num_layers(world))
    result = search(world, tmp_path, scorer)
    # 60 items a task: 30 in the search part, 8 of them (a quarter) the selection part, 22 the rung pool. With
    # reduction 3, two rungs leave every figure ≥ 5 items on the first (7 a task); three would leave 2.
    fidelity = result.summary["protocol"]["fidelity"]
    assert fidelity["rungs"] == 2 and fidelity["items"] == [dict.fromkeys(TASKS, 7), dict.fromkeys(TASKS, 22)]
    study = study_of(tmp_path / "out")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert all(t.user_attrs["rung"] == 1 and t.user_attrs["items"] == 88 for t in trials if t.user_attrs.get(
        "baseline"))  # baselines: every rung, whatever the pruner says
    stopped = [t for t in trials if t.user_attrs["rung"] == 0]
    assert stopped and all(t.user_attrs["items"] == 28 and t.state.name == "COMPLETE" for t in stopped)
    # Replay asynchronous successive halving on the values reported at rung 0 (one worker: in trial order): a
    # trial goes on when its value is at least the (n // 3)-th best of the n values reported so far (the best one
    # while n < 3).
    seen: list[float] = []
    for t in trials:
        seen.append(t.intermediate_values[1])
        keep = max(1, len(seen) // 3)
        promoted = t.intermediate_values[1] >= sorted(seen)[-keep]
        assert (t.user_attrs["rung"] == 1) == (promoted or bool(t.user_attrs.get("baseline"))), t.number
    # Every constraint was judged by its bound, paired with λ = 0 on the same items: recompute one trial's.
    searched = next(t for t in trials if t.user_attrs["rung"] == 1 and not t.user_attrs.get("baseline"))
    coefficients = Coefficients.model_validate(searched.user_attrs["coefficients"])
    lambda0 = Coefficients.model_validate(trials[0].user_attrs["coefficients"])
    config = SearchEvalConfig.from_yaml(tmp_path / "eval.yaml")
    stage = config.rung_stage(1, RungPlan(2, 3))
    j = judge(scorer.items(coefficients, stage), scorer.items(lambda0, stage), safety=config.safety,
              medical=config.medical, benign=["benign"], z=z_of(0.8))
    assert searched.user_attrs["medical_drop_bound"] == pytest.approx(j.medical_drop_bound)
    assert searched.user_attrs["constraints"] == pytest.approx([j.medical_drop_bound - 0.02,
                                                                j.over_refusal_bound - 0.2])
    assert searched.system_attrs["constraints"] == pytest.approx(searched.user_attrs["constraints"])
    items = result.summary["items"]
    assert items["total"] == sum(t.user_attrs["items"] for t in trials)
    assert items["trials_by_last_rung"] == {"0": len(stopped), "1": len(trials) - len(stopped)}


def test_the_final_pick_is_the_best_finalist_on_the_whole_search_part(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    scorer = Landscape(num_layers(world))
    result = search(world, tmp_path, scorer, trials=24)
    pick = result.summary["pick"]
    study = study_of(tmp_path / "out")
    top = [t for t in study.trials if t.user_attrs["rung"] == 1 and not t.user_attrs.get("baseline")]

    def pool_key(t):
        a = t.user_attrs
        feasible = a["medical_drop_bound"] <= 0.02 + 1e-12 and a["over_refusal_bound"] <= 0.2 + 1e-12
        return (feasible, a["safety"], a["medical"], -t.number)

    assert pick["finalists"] == [t.number for t in sorted(top, key=pool_key, reverse=True)[:5]]
    heldout = json.loads((tmp_path / "out" / "heldout.json").read_text())
    config_tasks = {"safety": ["catqa", "hexphi"], "medical": ["pubmedqa"], "benign": ["benign"]}
    objective = Objective(max_medical_drop=0.02, max_over_refusal=0.2)
    by_trial = {m["trial"]: m["in_sample"] for m in heldout["models"].values()}
    reference = heldout["models"]["lambda0"]["in_sample"]
    keys = {n: judged_key(judge(by_trial[n], reference, z=z_of(0.8), **config_tasks), objective, "random", n)
            for n in pick["finalists"]}
    assert pick["trial"] == max(keys, key=keys.get) == result.summary["best_searched"]["number"]
    assert pick["rule"] == "search part"
    recipe = yaml.safe_load((tmp_path / "out" / "best_recipe.yaml").read_text())
    best = result.summary["best"]["number"]
    assert recipe["description"].startswith(f"graft search, study 'graft-search': trial {best} ")


def test_an_item_budget_ends_the_study(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    result = search(world, tmp_path, Landscape(num_layers(world)), trials=None, budget_items=900)
    study = study_of(tmp_path / "out")
    spent = [t.user_attrs["items"] for t in sorted(study.trials, key=lambda t: t.number)]
    assert sum(spent) >= 900 and sum(spent[:-1]) < 900  # the last trial crossed the budget; none started after
    assert result.summary["items"]["total"] == sum(spent) and result.summary["budget_items"] == 900
    # Three baselines on both rungs (88 items each) and one first rung (28) is the least a study can spend.
    with pytest.raises(UsageError, match=r"--budget-items 291: the 3 baselines alone score 264 items .* give at "
                                         r"least 292"):
        search(world, tmp_path / "b", Landscape(num_layers(world)), trials=None, budget_items=291,
               out=tmp_path / "b" / "out")


def test_a_target_over_the_cap_is_said_at_the_start_and_a_less_safe_pick_is_never_silent(
        make_world, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    world = make_world("causal")
    # The target refuses 40 % of benign prompts and is 60 % safe; grafting attention lowers both.
    scorer = Landscape(num_layers(world), refusal=0.4, refusal_slope=-0.3, safety0=0.6)
    scorer_rates = scorer.rates

    def rates(c):
        r = scorer_rates(c)
        factors = c.layer_factors(scorer.num_layers)
        attn = sum(c.lam(layer, "attn", factors) for layer in range(scorer.num_layers)) / scorer.num_layers
        return {**r, "catqa": max(0.0, 0.6 - 0.25 * attn), "hexphi": max(0.0, 0.6 - 0.25 * attn)}

    scorer.rates = rates
    result = search(world, tmp_path, scorer, trials=16)
    err = capsys.readouterr().err
    assert "warning: the target itself (λ = 0) refuses" in err and "over the cap ρ = 0.2" in err
    warnings = result.summary["warnings"]
    assert any(w.startswith("the target itself (λ = 0) refuses") for w in warnings)
    assert any("LESS SAFE than the target itself" in w for w in warnings)
    assert "LESS SAFE than the target itself" in err
    # Keeping safety at the target's level is a constraint the objective carries: no feasible pick loses safety.
    kept = search(world, tmp_path / "k", scorer, trials=16, out=tmp_path / "k" / "out", keep_target_safety=True)
    study = study_of(tmp_path / "k" / "out")
    assert all(len(t.user_attrs["constraints"]) == 3 for t in study.trials)
    best = kept.summary["best"]
    assert best["safety_loss_bound"] is None or best["safety_loss_bound"] <= 1e-12 or not best["feasible"]


def test_a_pick_on_the_edge_of_its_space_names_the_parameter_and_how_to_widen_it(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    # Attention λ on a grid of 0, 0.25, 0.5: safety only grows with it and nothing else costs, so the pick is at 0.5.
    space = ("graft_space: 1\nsampler: random\n"
             "groups: {attn: {low: 0.0, high: 0.5, step: 0.25}, mlp: 0.0, norm: 0.0, embed: 0.0, head: 0.0}\n"
             "baselines: {uniform: [0.25]}\n")
    scorer = Landscape(num_layers(world), refusal_slope=0.0)
    path = space_file(tmp_path, space)
    result = search(world, tmp_path, scorer, trials=20, space=path, eval_config=eval_file(tmp_path,
                                                                                           fidelity={"rungs": 1}))
    assert result.summary["best_searched"]["coefficients"]["groups"]["attn"] == 0.5
    edges = result.summary["boundary"]
    assert [(e["param"], e["side"], e["field"]) for e in edges] == [("group_attn", "upper", "groups.attn.high")]
    assert any(f"widen groups.attn.high in {path} (e.g. to 1)" in w for w in result.summary["warnings"])


@pytest.mark.parametrize(("args", "changes", "message"), [
    (["--confidence", "1.5"], {}, "--confidence 1.5: expected a finite number in (0, 1)"),
    (["--budget-items", "10"], {}, "--budget-items 10: the 3 baselines alone score"),
    ([], {"fidelity": {"rungs": 5}}, "fidelity.rungs: 5 rungs of reduction 3 leave"),
    ([], {"fidelity": {"rungs": 3, "min_items": 1}}, "fidelity.rungs: 3 rungs of reduction 3 give"),
    ([], {"fidelity": {"rungs": 0}}, "fidelity.rungs: expected auto or a number of rungs from 1 to 8"),
    ([], {"selection": {"share": 1.0}}, "selection.share"),
])
def test_cli_refuses_bad_protocol_settings_in_one_line(make_world, tmp_path: Path, args, changes, message) -> None:
    world = make_world("causal")
    evals = eval_file(tmp_path, **changes)
    result = runner.invoke(app, ["search", "-t", str(world.target), "--vector", str(world.vector), "--space",
                                 str(space_file(tmp_path)), "--eval", str(evals), "--out", str(tmp_path / "out"),
                                 *(args or ["--trials", "5"])])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "out").exists()  # refused before any output


def test_without_trials_or_an_item_budget_the_cli_says_what_to_give(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    result = runner.invoke(app, ["search", "-t", str(world.target), "--vector", str(world.vector), "--space",
                                 str(space_file(tmp_path)), "--eval", str(eval_file(tmp_path)), "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2 and "give --trials" in result.output


def test_a_promotion_scores_only_the_items_the_next_rung_adds(make_world, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import graft.evals

    world = make_world("causal")
    calls: list[dict] = []
    real = graft.evals.evaluate

    def spy(*args, **kwargs):
        results = real(*args, **kwargs)
        split = kwargs.get("split")
        calls.append({"share": getattr(split, "share", None), "side": getattr(split, "side", None),
                      "items": sum(len([s for s in results.samples if s["task"] == t]) for t in results.timing),
                      "cached": sum(v["cached"] for v in results.timing.values())})
        return results

    monkeypatch.setattr(graft.evals, "evaluate", spy)
    evals = eval_file(tmp_path, safety=["catqa"], medical=["pubmedqa"], over_refusal=False, max_new_tokens=2,
                      holdout=0.0, selection={"share": 0.0, "upper_bound": False},
                      fidelity={"rungs": 2, "reduction": 2, "min_items": 1},
                      objective={"max_medical_drop": 1.0})
    run_search(space=space_file(tmp_path), eval_config=evals, target=str(world.target), vector=str(world.vector),
               out=tmp_path / "out", trials=4, device="cpu")
    rungs = [c for c in calls if c["side"] == "pool"]
    # catqa 12 items and pubmedqa 6: the first rung reads half of each (6 + 3), the second all (12 + 6).
    first = [c for c in rungs if c["share"] == 0.5]
    second = [c for c in rungs if c["share"] == 1.0]
    assert first and all(c["items"] == 9 for c in first) and all(c["items"] == 18 for c in second)
    # λ = 0 is scored once as the reference (18 fresh), then as the first trial: everything cached. Every other
    # recipe's second rung finds its first rung's 9 items in the verdict cache and scores only the 9 it adds.
    fresh = [c["items"] - c["cached"] for c in second]
    assert fresh[0] == 18 and all(f == 9 for f in fresh[2:])


def test_a_budget_too_small_for_any_searched_trial_to_reach_the_last_rung_still_picks_one(make_world,
                                                                                         tmp_path: Path) -> None:
    world = make_world("causal")
    scorer = Landscape(num_layers(world))
    result = search(world, tmp_path, scorer, trials=2)
    study = study_of(tmp_path / "out")
    searched = [t for t in study.trials if not t.user_attrs.get("baseline")]
    assert len(searched) == 2 and all(t.user_attrs["rung"] == 0 for t in searched)  # neither was promoted
    assert any("no searched trial reached the last rung (rung 1); the finalists come from rung 0" in w
               for w in result.summary["warnings"])
    assert result.summary["best_searched"]["number"] in {t.number for t in searched}
    assert result.summary["report"]["models"]["searched"]["held_out"] is not None


def test_a_study_from_before_bounds_and_rungs_goes_on_as_it_was_made(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    scorer = Landscape(num_layers(world))
    search(world, tmp_path, scorer, trials=2, eval_config=eval_file(tmp_path, fidelity={"rungs": 1}))
    study = study_of(tmp_path / "out")
    meta = study.user_attrs["graft_search"]
    del meta["protocol"]
    study.set_user_attr("graft_search", meta)
    again = search(world, tmp_path, scorer, trials=4, eval_config=eval_file(tmp_path, fidelity={"rungs": 1}))
    assert again.summary["protocol"]["confidence"] == 0.5 and again.summary["protocol"]["selection"]["share"] == 0
    new = [t for t in study_of(tmp_path / "out").trials if t.number >= 5]
    # Point estimates (the bound is the drop itself), every trial on the whole search part (no selection part).
    assert all(t.user_attrs["medical_drop_bound"] == pytest.approx(t.user_attrs["medical_drop"]) for t in new)
    assert all(t.user_attrs["items"] == 4 * 30 for t in new)
    assert again.summary["pick"]["rule"] == "rung pool"
