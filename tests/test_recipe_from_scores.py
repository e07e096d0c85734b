"""`graft recipe --from-scores`: a recipe grafting only the layer × group cells whose inspect score crosses a
threshold, checked against cosines computed here from the weights, merged, and used as a search's base recipe."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import yaml
from typer.testing import CliRunner

from graft.cli import app
from graft.recipe import Recipe
from tests.test_merge import load_folder, target_name
from tests.test_search import LambdaScorer, eval_file, num_layers, space_file

runner = CliRunner()


def cell_of(name: str) -> tuple[int, str] | None:
    """(layer, group) of a Llama-style attention or MLP weight, from its name."""
    found = re.search(r"layers\.(\d+)\.(self_attn|mlp)\.", name)
    return (int(found.group(1)), "attn" if found.group(2) == "self_attn" else "mlp") if found else None


def test_recipe_from_cosine_scores_grafts_exactly_the_selected_cells(make_world, tmp_path: Path) -> None:
    world = make_world("causal", dtype=torch.float32, vector_dtype="float32")
    report = tmp_path / "report"
    done = runner.invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target), "--origin",
                               str(world.origin), "--no-safelora", "--out", str(report), "-q"])
    assert done.exit_code == 0, done.output
    # cos(τ, τ_med) per cell, from the weights
    target, origin, tau = load_folder(world.target), load_folder(world.origin), load_folder(world.vector)
    sums: dict[tuple[int, str], list[float]] = {}
    members: dict[tuple[int, str], list[str]] = {}
    for donor, t in tau.items():
        name = target_name("causal", donor)
        cell = cell_of(name)
        if cell is None:
            continue
        med = target[name].double().numpy() - origin[name].double().numpy()
        t64 = t.double().numpy()
        acc = sums.setdefault(cell, [0.0, 0.0, 0.0])
        acc[0] += float((t64 * med).sum())
        acc[1] += float((t64 * t64).sum())
        acc[2] += float((med * med).sum())
        members.setdefault(cell, []).append(name)
    cosine = {cell: d / np.sqrt(a * b) for cell, (d, a, b) in sums.items()}
    threshold = float(np.median(list(cosine.values())))
    expected = {n for cell, c in cosine.items() if c < threshold for n in members[cell]}
    assert 0 < len(expected) < sum(len(v) for v in members.values())

    recipe_file = tmp_path / "selected.yaml"
    done = runner.invoke(app, ["recipe", "--from-scores", str(report), "--metric", "cos_tau_med", "--threshold",
                               repr(threshold), "--scale", "0.9", "--out", str(recipe_file)])
    assert done.exit_code == 0, done.output
    recipe = Recipe.from_yaml(recipe_file)
    assert recipe.coefficients.scale == 0.9 and recipe.options.origin == str(world.origin)
    merged = tmp_path / "merged"
    assert runner.invoke(app, ["merge", "--recipe", str(recipe_file), "--out", str(merged), "-q"]).exit_code == 0
    out = load_folder(merged)
    changed = {n for n in target if not torch.equal(out[n], target[n])}
    assert changed == expected
    name = sorted(expected)[0]
    donor = next(d for d in tau if target_name("causal", d) == name)
    want = target[name].numpy() + tau[donor].numpy() * np.float32(0.9)
    assert out[name].numpy().tobytes() == want.astype(np.float32).tobytes()

    # as a search prior: every trial keeps the selection (the base recipe's mapping), whatever λ it draws
    search = tmp_path / "search"
    space = space_file(tmp_path, "graft_space: 1\nsampler: random\nscale: {low: 0.0, high: 1.5}\n"
                       "groups: {attn: 1.0, mlp: 1.0, norm: 0.0, embed: 0.0, head: 0.0}\n"
                       "baselines: {uniform: [1.0]}\n")
    from graft.search import run_search

    run_search(space=space, eval_config=eval_file(tmp_path), recipe=recipe_file, out=search,
               scorer=LambdaScorer(num_layers(world)), trials=4, seed=1)
    best = yaml.safe_load((search / "best_recipe.yaml").read_text())
    assert best["mapping"]["include"] == yaml.safe_load(recipe_file.read_text())["mapping"]["include"]
    again = tmp_path / "again"
    done = runner.invoke(app, ["merge", "--recipe", str(search / "best_recipe.yaml"), "--scale", "1.0", "--out",
                               str(again), "-q"])
    assert done.exit_code == 0, done.output
    regrafted = load_folder(again)
    assert {n for n in target if not torch.equal(regrafted[n], target[n])} == expected

    # bad input: one line, the documented exit code, nothing written
    for extra, code, message in [
        (["--threshold", "-1"], 2, "no attn, mlp cell has cos_tau_med < -1"),
        (["--threshold", "-5"], 2, "--threshold -5.0: expected a finite number in [-1, 1]"),
        (["--threshold", "-inf"], 2, "--threshold -inf: expected a finite number in [-1, 1]"),
        (["--threshold", "nan"], 2, "--threshold nan: expected a finite number in [-1, 1]"),
        (["--metric", "ratio", "--threshold", "-0.5"], 2, "--threshold -0.5: expected a finite number ≥ 0"),
        (["--metric", "nope"], 2, "--metric nope: expected one of"),
        (["--groups", "attn,brain"], 2, "--groups attn,brain"),
    ]:
        bad = runner.invoke(app, ["recipe", "--from-scores", str(report), *extra, "--out", str(tmp_path / "b.yaml")])
        assert bad.exit_code == code and message in bad.output, (extra, bad.output)
    plain = tmp_path / "plain-report"
    assert runner.invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target),
                               "--out", str(plain), "-q"]).exit_code == 0
    bad = runner.invoke(app, ["recipe", "--from-scores", str(plain), "--out", str(tmp_path / "b.yaml")])
    assert bad.exit_code == 3 and "has a cos_tau_med score" in bad.output, bad.output
    bad = runner.invoke(app, ["recipe", "--from-scores", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b.yaml")])
    assert bad.exit_code == 3 and "not a folder" in bad.output, bad.output
    assert not (tmp_path / "b.yaml").exists()


def test_report_made_elsewhere_and_edited_reports(make_world, tmp_path: Path, monkeypatch) -> None:
    """Paths work from any folder (stored absolute); a report whose files disagree, or hold a cell that is not a
    finite number in the score's range (a cosine of −inf or 1.5), or is not a graft inspect index, is refused with
    one line naming the file, and nothing is written."""
    import json
    import shutil

    world = make_world("causal", dtype=torch.float32, vector_dtype="float32")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("target", "origin", "vector"):  # relative paths, as a user in that folder types them
        shutil.copytree(getattr(world, name), work / name)
    monkeypatch.chdir(work)
    assert runner.invoke(app, ["inspect", "--vector", "vector", "--target", "target", "--origin", "origin",
                               "--no-safelora", "--out", "report", "-q"]).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    done = runner.invoke(app, ["recipe", "--from-scores", "../work/report", "--threshold", "1", "--out",
                               "sub/selected.yaml"])
    assert done.exit_code == 0, done.output
    recipe = Recipe.from_yaml(elsewhere / "sub" / "selected.yaml")
    assert (recipe.target, recipe.vector, recipe.options.origin) == tuple(
        str((work / n).resolve()) for n in ("target", "vector", "origin"))
    plan = runner.invoke(app, ["plan", "--recipe", "sub/selected.yaml", "-q"])
    assert plan.exit_code == 0, plan.output

    def edited(name: str, change) -> Path:
        copy = tmp_path / f"edited-{name}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(work / "report", copy)
        path = copy / name
        path.write_text(change(path.read_text()))
        return copy

    def first_row(column: str, value: str):
        def change(text: str) -> str:
            lines = text.splitlines()
            header = lines[0].split(",")
            cells = lines[1].split(",")
            cells[header.index(column)] = value
            return "\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n"
        return change

    relative = json.loads((work / "report" / "inspect.json").read_text())
    relative["sources"]["target"] = "target"  # a report from an older graft, relative to where it ran
    cases = [
        (edited("layers.csv", first_row("layer", "99")), "tensors.csv", "no tensor of the selected cell layer 99 attn"),
        (edited("layers.csv", first_row("cos_tau_med", "abc")), "layers.csv", "line 2, column 'cos_tau_med'"),
        (edited("layers.csv", first_row("layer", "x")), "layers.csv", "line 2, column 'layer'"),
        (edited("layers.csv", first_row("layer", "inf")), "layers.csv", "line 2, column 'layer'"),
        (edited("layers.csv", first_row("cos_tau_med", "-inf")), "layers.csv",
         "column 'cos_tau_med': '-inf' is not a cos_tau_med score (a finite number in [-1, 1])"),
        (edited("layers.csv", first_row("cos_tau_med", "1.5")), "layers.csv", "line 2, column 'cos_tau_med': '1.5'"),
        (edited("inspect.json", lambda t: t.replace('"format_version": 1', '"format_version": 99')), "inspect.json",
         "format_version 99"),
        (edited("inspect.json", lambda t: json.dumps(relative)), "inspect.json", "sources.target 'target' does not"),
        (edited("inspect.json", lambda t: t.replace("{", '{"format_version": 1, ', 1)), "inspect.json",
         "appears twice"),
    ]
    for report, file, words in cases:
        bad = runner.invoke(app, ["recipe", "--from-scores", str(report), "--threshold", "1", "--out", "b.yaml"])
        (line,) = bad.stderr.strip().splitlines() or [f"exit {bad.exit_code}: {bad.output}"]
        assert bad.exit_code == 3 and file in line and words in line, (file, bad.output)
        assert not (elsewhere / "b.yaml").exists()

    # scores for other groups only: the error says which, not "rerun inspect"; a huge scale is said when written
    blank = edited("layers.csv", lambda t: "\n".join(
        line if i == 0 or ",norm," not in line else ",".join(
            "" if j == t.splitlines()[0].split(",").index("cos_tau_med") else cell
            for j, cell in enumerate(line.split(",")))
        for i, line in enumerate(t.splitlines())) + "\n")
    bad = runner.invoke(app, ["recipe", "--from-scores", str(blank), "--groups", "norm", "--out", "b.yaml"])
    assert bad.exit_code == 3 and "the report scores only attn" in bad.stderr, bad.output
    loud = runner.invoke(app, ["recipe", "--from-scores", "../work/report", "--threshold", "1", "--scale", "1e40",
                               "--out", "loud.yaml"])
    assert loud.exit_code == 0 and "--scale 1e+40" in loud.stderr and "far outside" in loud.stderr, loud.output
