"""Printed paths: no `..` detours, and never a spelling that names another file."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import yaml
from typer.testing import CliRunner

from graft.cli import app
from graft.display import shown


def test_plan_and_merge_print_paths_without_detours(make_world, tmp_path: Path, monkeypatch) -> None:
    world = make_world("causal")
    for name, source in (("target", world.target), ("vector", world.vector)):
        os.symlink(source, tmp_path / name)
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text(yaml.safe_dump({"target": "../target", "vector": "../vector", "out": "../merged"}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["plan", "--recipe", "recipes/r.yaml"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "│ target  │ target  (backbone" in result.stdout and "│ vector  │ vector  (backbone" in result.stdout
    assert ".." not in result.stdout
    result = CliRunner().invoke(app, ["merge", "--recipe", "recipes/r.yaml", "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "merged") and (tmp_path / "merged" / "config.json").is_file()


def test_a_dotdot_after_a_symlink_is_resolved_not_normalised(tmp_path: Path) -> None:
    (tmp_path / "deep" / "inner").mkdir(parents=True)
    (tmp_path / "deep" / "x").mkdir()
    (tmp_path / "x").mkdir()  # what normpath would wrongly point at
    os.symlink(tmp_path / "deep" / "inner", tmp_path / "link")
    tricky = tmp_path / "link" / ".." / "x"
    assert shown(tricky) == str((tmp_path / "deep" / "x").resolve())
    assert shown(tmp_path / "a" / ".." / "x") == str(tmp_path / "x")
    assert shown("plain/path") == "plain/path"


def test_printable_escapes_what_a_terminal_would_act_on_and_keeps_the_rest() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from graft.display import printable

    assert printable("model.layers.0.\x1b[31mq_proj") == "model.layers.0.\\x1b[31mq_proj"
    assert printable("a\nb\rc\u202ed\ud800") == "a\\nb\\rc\\u202ed\\ud800"
    assert printable("éτ中 q_proj") == "éτ中 q_proj"

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
    def holds(text: str) -> None:
        shown = printable(text)
        shown.encode("utf-8")  # no lone surrogate is left: every encoder that takes Unicode takes it
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in shown)
        assert not set(shown) & set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
        assert [c for c in text if c not in shown] == [c for c in text if printable(c) != c]  # only those change

    holds()
