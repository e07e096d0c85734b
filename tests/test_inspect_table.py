"""`graft inspect`'s summary table fits an 80-column terminal without hiding a header or a digit."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from graft.cli import app


def test_summary_table_at_80_columns(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"coefficients": {"scale": 0.5}}))
    result = CliRunner().invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target),
                                      "--origin", str(world.origin), "--recipe", str(recipe), "--top", "3"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.stdout
    words = " ".join(result.stdout.split())
    for header in ("layer", "group", "tensors", "‖τ‖/ ‖θ‖", "cos(τ, τ_med)", "Safe- LoRA", "|λ|· ratio"):
        assert all(part in words for part in header.split()), header
    assert len([line for line in lines if line.strip()[:1].isdigit()]) == 3  # one line per row: nothing folded
