"""`graft eval --json`: the results as JSON for a script (`-`: on stdout, alone; the table stays on stderr)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from graft.cli import app
from graft.errors import OutputError
from graft.evals.config import FIXTURES


def test_eval_json_on_stdout_is_the_results(tiny_llama, tmp_path):
    out = tmp_path / "results.json"
    args = ["eval", str(tiny_llama), "--tasks", "catqa,medqa", "--data", str(FIXTURES / "data.yaml"), "--out",
            str(out), "--limit", "2", "--max-new-tokens", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--json", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(out.read_text())  # stdout holds the JSON and nothing else
    assert "score ± SE" in result.stderr  # the table, for the eye


def test_eval_json_destination_is_checked_before_the_work(tiny_llama, tmp_path):
    """A --json that may not be written (here: the data config, an input) is refused before any model loads."""
    data = tmp_path / "data.yaml"
    data.write_text(f"catqa: {FIXTURES / 'catqa/catqa_english.json'}\n")
    before = data.read_bytes()
    result = CliRunner().invoke(app, ["eval", str(tiny_llama), "--tasks", "catqa", "--data", str(data), "--out",
                                      str(tmp_path / "r.json"), "--json", str(data), "--device", "cpu"])
    assert result.exit_code == OutputError.exit_code, result.output
    assert "--json" in result.stderr and data.read_bytes() == before
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.samples.jsonl").exists()
