"""The top-level Python API (`import graft`): each name is the very function its command calls, and works on its
own from a notebook."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import graft
from graft.cli import app
from graft.errors import UsageError
from tests.test_merge import load_folder, reference_graft, stored_tau

runner = CliRunner()

# API name -> (module the command imports it from, attribute there, a command line that reaches the call)
COMMANDS = {
    "extract_vector": ("graft.engines.extract", "extract_vector",
                       ["extract", "-b", "{base}", "-a", "{aligned}", "-o", "{out}"]),
    "open_plan": ("graft.engines.merge", "open_plan", ["plan", "-t", "{target}", "--vector", "{vector}"]),
    "run_merge": ("graft.engines.merge", "merge", ["merge", "-t", "{target}", "--vector", "{vector}", "-o", "{out}"]),
    "evaluate": ("graft.evals.suite", "evaluate", ["eval", "{target}", "--data", "{out}.yaml", "--tasks", "catqa"]),
    "run_search": ("graft.search.run", "run_search",
                   ["search", "--space", "s.yaml", "--eval", "e.yaml", "--trials", "1", "-o", "{out}"]),
    "inspect_vector": ("graft.inspect.run", "inspect_vector", ["inspect", "--vector", "{vector}"]),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_api_name_is_what_its_command_calls(make_world, tmp_path: Path, monkeypatch, name: str) -> None:
    module, attribute, argv = COMMANDS[name]
    original = getattr(importlib.import_module(module), attribute)
    assert getattr(graft, name) is original

    def spy(*args, **kwargs):
        raise UsageError(f"spy {attribute} reached")

    monkeypatch.setattr(importlib.import_module(module), attribute, spy)
    world = make_world("causal")
    fields = {"base": world.base, "aligned": world.aligned, "target": world.target, "vector": world.vector,
              "out": tmp_path / "out"}
    result = runner.invoke(app, [a.format(**fields) for a in argv])
    assert result.exit_code == 2 and f"spy {attribute} reached" in result.output, result.output


def test_api_round_trip_extract_plan_merge_inspect(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    vector = graft.extract_vector(world.base, world.aligned, tmp_path / "vector").out
    recipe = graft.Recipe(target=str(world.target), vector=str(vector), out=str(tmp_path / "merged"),
                          coefficients={"scale": 0.4})
    plan = graft.open_plan(recipe)
    try:
        grafted = {a.target for a in plan.grafted}
        assert grafted and not plan.problems()
    finally:
        graft.close_plan(plan)

    result = graft.run_merge(recipe)
    assert result.grafted == len(grafted)
    merged, target = load_folder(result.out), load_folder(world.target)
    base, aligned = load_folder(world.base), load_folder(world.aligned)
    for name in sorted(grafted)[:5]:
        assert torch.equal(merged[name], reference_graft(target[name], stored_tau(base, aligned, name), 0.4))

    # In a notebook: the plan as a context manager, from a Recipe or a recipe file; its shard handles closed after.
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(recipe.to_yaml())
    for source in (recipe, recipe_file, str(recipe_file)):
        with graft.open_plan(source) as plan:
            assert {a.target for a in plan.grafted} == grafted
            name = sorted(grafted)[0]
            assert torch.equal(plan.target.read(name), target[name])  # reads through an open shard handle
            handles = plan.target._handles
            assert handles._open
        assert not handles._open  # closed on leaving the block

    found = graft.inspect_vector(vector, target=world.target, safelora=False, out=tmp_path / "report")
    # ‖τ‖ per layer × group cell, squared and summed, is ‖τ‖ over everything (computed here from the weights)
    total = sum(float((aligned[n].double() - base[n].double()).square().sum()) for n in aligned if n in base
                and aligned[n].is_floating_point())
    assert float((found.scores["tau_norm"] ** 2).sum()) == pytest.approx(total, rel=1e-3)
    assert found.lambdas is None and found.report is not None and (found.report.out / "layers.csv").exists()


def test_import_graft_loads_no_heavy_library() -> None:
    code = "import sys, graft; print(sorted(m for m in ('torch', 'transformers', 'pandas', 'optuna') if m in " \
           "sys.modules)); print(graft.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["[]", graft.__version__]


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'extract'"):
        graft.extract  # noqa: B018
    assert set(graft.__all__) - {"__version__"} <= set(dir(graft))
