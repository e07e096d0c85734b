"""`graft inspect --json`: every row of the summary table (not only --top) as JSON, equal to the report's
layers.csv; and an --out that may not be written is refused before any scoring."""

from __future__ import annotations

import json
import math

import pandas as pd
from typer.testing import CliRunner

from graft.cli import app

runner = CliRunner()


def test_inspect_json_holds_every_cell_of_the_report(make_world, tmp_path):
    world = make_world("qwen2_vl")
    out = tmp_path / "report"
    result = runner.invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target),
                                 "--origin", str(world.origin), "--out", str(out), "--top", "2", "--json", "-",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert "top 2 of" in result.stderr  # the table went to stderr, the JSON alone to stdout
    layers = pd.read_csv(out / "layers.csv")
    assert len(rows) == len(layers) > 2
    for row, (_, ref) in zip(sorted(rows, key=_key), sorted(layers.iterrows(), key=lambda r: _key(r[1])),
                             strict=True):
        for column in ("tau_norm", "ratio", "cos_tau_med", "safelora_score"):
            want = ref[column]
            assert (row[column] is None) if pd.isna(want) else math.isclose(row[column], want, rel_tol=1e-9), column


def _key(row) -> tuple:
    layer = row["layer"]
    return (-1 if layer is None or (isinstance(layer, float) and math.isnan(layer)) else int(layer), row["group"])


def test_an_existing_report_folder_is_refused_before_any_scoring(make_world, tmp_path, monkeypatch):
    import graft.inspect.scores as scores
    from graft.errors import OutputError

    world = make_world("qwen2_vl")
    out = tmp_path / "report"
    first = runner.invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target), "--out",
                                str(out), "--no-safelora", "--device", "cpu", "-q"])
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def no_scoring(*_args, **_kwargs):
        raise AssertionError("scored before checking --out")

    monkeypatch.setattr(scores, "score_tensors", no_scoring)
    again = runner.invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target), "--out",
                                str(out), "--no-safelora", "--device", "cpu"])
    assert again.exit_code == OutputError.exit_code, again.output
    assert "--force" in again.stderr and str(out) in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
