"""Progress: a rich bar on a terminal, one plain line per finished step elsewhere, nothing when quiet; the search's
running best feasible trial beside the best uniform λ."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from rich.console import Console
from test_search import LambdaScorer, eval_file, load_study, num_layers, space_file
from test_search_tools import SMALL

from graft.cli.progress import StepProgress
from graft.search import run_search
from graft.search.run import standing


def console(terminal: bool, quiet: bool = False) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, quiet=quiet, width=120), buf


def test_plain_lines_count_steps_and_units_with_rate_and_eta() -> None:
    con, buf = console(terminal=False)
    bar = StepProgress(con, unit="items", title="eval")
    bar.start(30, steps_total=3)
    for n in (10, 12, 8):
        bar.advance(n)
    bar.stop()
    lines = buf.getvalue().splitlines()
    assert [re.sub(r"[\d.]+ items/s, ETA .*", "R", line) for line in lines] == [
        "eval: 1/3 tasks, 10/30 items, R", "eval: 2/3 tasks, 22/30 items, R", "eval: 3/3 tasks, 30/30 items, R"]
    assert lines[-1].endswith("ETA 0 s") and "ETA" in lines[0]


def test_terminal_gets_a_bar_and_quiet_gets_nothing() -> None:
    con, buf = console(terminal=True)
    bar = StepProgress(con, unit="trials", title="search")
    bar.start(4)
    bar.advance(done=2, note="trial 1")
    con.print("a message above the bar")
    bar.stop()
    text = buf.getvalue()
    assert "a message above the bar" in text and "2/4" in text and "trials/s" in text
    quiet, qbuf = console(terminal=True, quiet=True)
    bar = StepProgress(quiet, unit="items", title="eval")
    bar.start(2, steps_total=1)
    bar.advance(2)
    bar.stop()
    plain, pbuf = console(terminal=False, quiet=True)
    bar = StepProgress(plain, unit="items", title="eval")
    bar.start(2, steps_total=1)
    bar.advance(2)
    assert qbuf.getvalue() == "" and pbuf.getvalue() == ""


def test_search_reports_the_running_best_feasible_trial_against_the_best_uniform(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    said: list[str] = []
    run_search(space=space_file(tmp_path, SMALL), eval_config=eval_file(tmp_path), target=str(world.target),
               vector=str(world.vector), out=tmp_path / "out", scorer=LambdaScorer(num_layers(world)), trials=4,
               max_medical_drop=0.2, progress=said.append)
    lines = [line for line in said if line.startswith("so far (in sample): ")]
    study = load_study(tmp_path / "out")
    assert len(lines) == 7
    # Recomputed independently from the study: after each trial, the best feasible searched trial (drop ≤ δ) by
    # safety, and the best uniform λ by the same rule.
    reference = study.user_attrs["medical_reference"]
    for k, line in enumerate(lines):
        seen = study.trials[:k + 1]
        feasible = [t for t in seen if "baseline" not in t.user_attrs and reference - t.user_attrs["medical"] <= 0.2]
        uniform = [t for t in seen if t.user_attrs.get("baseline", "lambda0") != "lambda0"]
        best = max(feasible, key=lambda t: (t.user_attrs["safety"], t.user_attrs["medical"], -t.number), default=None)
        if best is None:
            assert "best feasible searched: none yet" in line
        else:
            assert f"best feasible searched: trial {best.number} (safety {best.user_attrs['safety']:.3f}" in line
        if uniform:
            ok = [t for t in uniform if reference - t.user_attrs["medical"] <= 0.2]
            pick = max(ok or uniform, key=lambda t: (bool(ok), t.user_attrs["safety"], t.user_attrs["medical"],
                                                      -t.number))
            assert f"best uniform λ: {pick.user_attrs['baseline']} (safety {pick.user_attrs['safety']:.3f}" in line
            if best is not None:
                gain = best.user_attrs["safety"] - pick.user_attrs["safety"]
                assert f"searched − uniform: safety {gain:+.3f}" in line
    assert lines[-1] == standing(study.trials, _objective(0.2))


def _objective(delta: float):
    from graft.search.config import Objective

    return Objective(max_medical_drop=delta)


def test_trials_count_searched_trials_and_the_steps_cover_the_final_report(make_world, tmp_path: Path) -> None:
    """--trials 3 runs three searched trials besides the baselines (and says so); the progress in steps counts
    every trial, then every recipe the final pick and the held-out report score again, and ends at its total."""
    from test_search import ItemScorer

    world = make_world("causal")
    said: list[str] = []
    steps: list[tuple[int, int]] = []
    scorer = ItemScorer(num_layers(world))
    rescored: list[str] = []
    items = scorer.items
    scorer.items = lambda c, stage, **kw: (rescored.append(stage.name), items(c, stage, **kw))[1]
    result = run_search(space=space_file(tmp_path, SMALL), eval_config=eval_file(tmp_path), target=str(world.target),
                        vector=str(world.vector), out=tmp_path / "out", scorer=scorer, trials=3, max_medical_drop=0.2,
                        progress=said.append, steps=lambda done, total: steps.append((done, total)))
    study = load_study(tmp_path / "out")
    baselines = [t for t in study.trials if "baseline" in t.user_attrs]
    assert len([t for t in study.trials if "baseline" not in t.user_attrs]) == 3 and len(baselines) == 3
    assert any("budget 3 searched trials, after 3 baselines (λ = 0 and 2 uniform λ)" in line for line in said)
    done = [d for d, _ in steps]
    assert done == sorted(done) and steps[-1][0] == steps[-1][1]  # the last step completes the bar
    # After the last trial, one step per recipe scored again: each of the final pick's scorings on the whole search
    # part, and each recipe of the report (scored on the search part and on the held-out part: one step).
    after_trials = steps[-1][1] - len(study.trials)
    assert after_trials == rescored.count("in-sample") > 0
    assert rescored.count("held-out") < rescored.count("in-sample")

    # In a notebook: the report and the trials as DataFrames, the same figures as summary.json and trials.csv.
    report = json.loads((tmp_path / "out" / "summary.json").read_text())["report"]
    frame = result.report_frame()
    assert list(frame.index) == list(report["models"]) + ([f"upper bound: {report['upper_bound']['label']}"]
                                                          if report.get("upper_bound") else [])
    for label, model in report["models"].items():
        for name in report["figures"]:
            assert frame.loc[label, f"{name}.held_out"] == model["held_out"][name]["value"]
            assert frame.loc[label, f"{name}.in_sample_se"] == model["in_sample"][name]["se"]
    assert frame["chosen_on_held_out"].sum() == (1 if report.get("upper_bound") else 0)
    trials = result.trials_frame()
    assert sorted(trials["number"]) == [t.number for t in study.trials]
    # graft search writes its two figures itself (PNG, read back with Pillow).
    from PIL import Image

    for name in ("history.png", "pareto.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
        assert result.summary["files"][name] == str(tmp_path / "out" / name)


def test_the_python_api_shows_progress_in_a_notebook_by_default(make_world, tmp_path: Path, monkeypatch,
                                                                 capsys) -> None:
    """`graft.evaluate` and `graft.run_search` called from a notebook show their progress without being asked (plain
    lines where rich has no widgets to draw a bar with); from a script only when asked; never with
    show_progress=False; a caller's own bar or steps replace it."""
    import graft
    from graft.evals.config import FIXTURES

    world = make_world("causal")
    args = dict(tasks="catqa,medqa", data=FIXTURES / "data.yaml", limit=2, max_new_tokens=2, device="cpu")
    graft.evaluate(world.target, **args)  # a script: quiet, as a library should be
    assert "eval: " not in capsys.readouterr().err
    graft.evaluate(world.target, show_progress=True, **args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eval: ")]
    assert lines and lines[-1].startswith("eval: 2/2 tasks, 4/4 items") and lines[-1].endswith("ETA 0 s")

    monkeypatch.setattr("graft.display.in_notebook", lambda: True)
    graft.evaluate(world.target, **args)
    assert "eval: 2/2 tasks, 4/4 items" in capsys.readouterr().err
    graft.evaluate(world.target, show_progress=False, **args)
    assert "eval: " not in capsys.readouterr().err

    run_search(space=space_file(tmp_path, SMALL), eval_config=eval_file(tmp_path), target=str(world.target),
               vector=str(world.vector), out=tmp_path / "out", scorer=LambdaScorer(num_layers(world)), trials=2,
               max_medical_drop=0.2)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("search: ")]
    assert lines and re.match(r"search: (\d+)/\1 steps", lines[-1]), lines[-1:]
    steps: list[tuple[int, int]] = []
    run_search(space=space_file(tmp_path, SMALL), eval_config=eval_file(tmp_path), target=str(world.target),
               vector=str(world.vector), out=tmp_path / "out2", scorer=LambdaScorer(num_layers(world)), trials=2,
               max_medical_drop=0.2, steps=lambda done, total: steps.append((done, total)))
    assert steps and "search: " not in capsys.readouterr().err  # the caller's own steps, not a second bar
