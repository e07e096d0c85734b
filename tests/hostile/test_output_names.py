# ruff: noqa: F811  (fixtures imported from tests/test_bad_input.py are parameters here)
"""Names graft writes never collide with names it copies: every file a merged folder will hold (the card, the recipe,
the marker, shards, index, the target's side files) is claimed once, case-insensitively, before any work; a second
claim is an input error (exit 3) naming the input file, from `plan` and `merge` alike, with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.test_bad_input import (  # noqa: F401 (fixtures)
    INDEX,
    SHARD2,
    Models,
    assert_error,
    assert_no_output,
    built,
    cli,
    m,
    merge_args,
    outdir,
    plan_args,
    tree_hash,
)


def rename_shard(folder: Path, old: str, new: str) -> None:
    (folder / old).rename(folder / new)
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {t: (new if f == old else f) for t, f in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))


def _refused(m: Models, outdir: Path, *names: str) -> None:
    before = tree_hash(m.target, m.vector)
    assert_error(cli(*plan_args(m.target, m.vector)), 3, *names)
    assert_error(cli(*merge_args(m.target, m.vector, outdir / "merged")), 3, *names)
    assert_no_output(outdir / "merged")
    assert tree_hash(m.target, m.vector) == before


@pytest.mark.parametrize("name", ["README.md", "graft_recipe.yaml", ".graft-output", ".graft-owner", "readme.MD",
                                  "GRAFT_RECIPE.YAML", ".model.safetensors.graft", ".x.graft-partial-12"])
def test_a_shard_named_like_a_file_graft_writes_is_an_input_error(m: Models, outdir: Path, name: str) -> None:
    rename_shard(m.target, SHARD2, name)
    _refused(m, outdir, str(m.target / INDEX), repr(name))
    # Re-sharding gives the output graft's own shard names: the way out the message names.
    result = cli(*merge_args(m.target, m.vector, outdir / "resharded", "--shard-size", "30KB"))
    assert result.exit_code == 0, result.output
    assert all(p.name.startswith("model-") for p in (outdir / "resharded").glob("*.safetensors"))
    assert yaml.safe_load((outdir / "resharded" / "graft_recipe.yaml").read_text())["target"] == str(m.target)


@pytest.mark.parametrize("where", ["README.original.md", "readme.ORIGINAL.md"])
def test_a_side_file_where_the_targets_readme_is_carried_is_an_input_error(m: Models, outdir: Path,
                                                                          where: str) -> None:
    (m.target / "README.md").write_text("the model's card\n")
    (m.target / where).write_text("another card\n")
    _refused(m, outdir, str(m.target), "README.original.md")


def test_a_side_folder_named_like_a_file_graft_writes_is_an_input_error(m: Models, outdir: Path) -> None:
    (m.target / "graft_recipe.yaml").mkdir()
    (m.target / "graft_recipe.yaml" / "notes.txt").write_text("x")
    _refused(m, outdir, str(m.target / "graft_recipe.yaml" / "notes.txt"), "graft_recipe.yaml")


def test_the_readme_of_the_target_is_kept_as_readme_original(m: Models, outdir: Path) -> None:
    (m.target / "README.md").write_text("the model's own card\n")
    out = outdir / "merged"
    assert cli(*merge_args(m.target, m.vector, out)).exit_code == 0
    assert (out / "README.original.md").read_text() == "the model's own card\n"
    assert (out / "README.md").read_text().startswith("---\n")


def test_grafting_into_a_graft_output_replaces_its_card_and_recipe(m: Models, outdir: Path) -> None:
    """A target graft made (it holds graft_recipe.yaml) brings the card and recipe of that earlier graft: the new
    ones replace them, the model's own card stays README.original.md, and the new recipe names the target."""
    (m.target / "README.md").write_text("the model's own card\n")
    first, second = outdir / "first", outdir / "second"
    assert cli(*merge_args(m.target, m.vector, first, "--scale", "0.5")).exit_code == 0
    before = tree_hash(first)
    result = cli(*merge_args(first, m.vector, second, "--scale", "0.25"))
    assert result.exit_code == 0, result.output
    assert (second / "README.original.md").read_text() == "the model's own card\n"
    assert yaml.safe_load((second / "graft_recipe.yaml").read_text())["target"] == str(first)
    assert "0.25" in (second / "README.md").read_text()
    assert tree_hash(first) == before
    merged = {k: v for shard in second.glob("*.safetensors") for k, v in load_file(shard).items()}
    assert len(merged) == len({k for shard in m.target.glob("*.safetensors") for k in load_file(shard)})
    shutil.rmtree(second)
