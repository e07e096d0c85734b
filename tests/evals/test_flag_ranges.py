"""Every numeric flag of eval, search, inspect, recipe --from-scores and demo has a documented range
(graft.flag_ranges), quoted by --help and enforced as one line, exit 2, naming the flag. The values a user reported
(`--max-new-tokens 0` scoring safety on empty replies, `--batch-size 0` or `-1` exiting 1, `--seed -1` crashing
after the work) and a cap beyond the model's context are checked here by name;
tests/test_properties_evaluation.py draws the rest."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from graft.cli import app
from graft.evals.config import FIXTURES
from graft.flag_ranges import DEMO, EVAL, INSPECT, RECIPE, SEARCH
from tests.test_bad_input import assert_error

runner = CliRunner()
TABLES = {"eval": EVAL, "search": SEARCH, "inspect": INSPECT, "recipe": RECIPE, "demo": DEMO}


def _numeric_options(command: str) -> list:
    """The options of `graft COMMAND` whose value is a number (int or float, optional or not)."""
    group = typer.main.get_command(app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    numeric = []
    for param in cmd.params:
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        kinds = set(typing.get_args(annotation)) | {annotation}
        if param.opts[0].startswith("--") and kinds & {int, float} and bool not in kinds:
            numeric.append(param)
    return numeric


@pytest.mark.parametrize("command", sorted(TABLES))
def test_every_numeric_flag_has_a_range_in_its_help(command: str) -> None:
    """A numeric flag added later without a range fails here."""
    options = _numeric_options(command)
    assert options, command
    flags = {r.flag for r in TABLES[command].values()}
    for option in options:
        assert option.opts[0] in flags, f"graft {command} {option.opts[0]}: no range in graft.flag_ranges"
        assert "Range:" in (option.help or ""), f"graft {command} {option.opts[0]}: --help does not give its range"


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--max-new-tokens", "0", "--max-new-tokens 0: expected an integer ≥ 1"),
    ("--batch-size", "0", "--batch-size 0: expected an integer ≥ 1"),
    ("--batch-size", "-1", "--batch-size -1: expected an integer ≥ 1"),
    ("--seed", "-1", "--seed -1: expected an integer in [0, 4294967295]"),
    ("--limit", "0", "--limit 0: expected an integer ≥ 1"),
    ("--fraction", "nan", "--fraction nan: expected a finite number in (0, 1]"),
])
def test_eval_flags_reported_out_of_range(flag: str, value: str, words: str, tiny_llama: Path, tmp_path: Path
                                          ) -> None:
    out = tmp_path / "r.json"
    assert_error(runner.invoke(app, ["eval", str(tiny_llama), "--tasks", "catqa", "--data",
                                     str(FIXTURES / "data.yaml"), "--out", str(out), flag, value]), 2, words)
    assert not out.exists()


def test_a_cap_beyond_the_models_context_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    import json

    context = json.loads((tiny_llama / "config.json").read_text())["max_position_embeddings"]
    out = tmp_path / "r.json"
    assert_error(runner.invoke(app, ["eval", str(tiny_llama), "--tasks", "catqa", "--data",
                                     str(FIXTURES / "data.yaml"), "--out", str(out), "--max-new-tokens",
                                     str(context + 1), "--device", "cpu", "-q"]),
                 2, f"--max-new-tokens {context + 1}", f"context of {context} tokens")
    assert not out.exists()


def test_the_python_api_gets_the_same_checks() -> None:
    from graft import inspect_vector
    from graft.errors import UsageError
    from graft.evals import evaluate

    with pytest.raises(UsageError, match="--batch-size 0: expected an integer ≥ 1"):
        evaluate("model", tasks="catqa", data=FIXTURES / "data.yaml", batch_size=0)
    with pytest.raises(UsageError, match=r"--limit 1.5: expected an integer ≥ 1"):
        evaluate("model", tasks="catqa", data=FIXTURES / "data.yaml", limit=1.5)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="--max-new-tokens True: expected an integer"):
        evaluate("model", tasks="catqa", data=FIXTURES / "data.yaml", max_new_tokens=True)
    with pytest.raises(UsageError, match="--trial -1"):
        inspect_vector("vector", storage="study.db", trial=-1)
