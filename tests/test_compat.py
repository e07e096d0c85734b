"""Moved import paths keep working for one release: the old path warns with the new one and gives the same objects;
no file is left at an old path."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from graft._compat import MOVED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_import(monkeypatch: pytest.MonkeyPatch):
    """Import a moved path as a first import would (the path and its parent's attribute forgotten afterwards)."""

    def imported(name: str):
        parent, _, leaf = name.rpartition(".")
        monkeypatch.delitem(sys.modules, name, raising=False)
        if hasattr(importlib.import_module(parent), leaf):
            monkeypatch.delattr(sys.modules[parent], leaf)
        return importlib.import_module(name)

    yield imported
    for name in MOVED:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_import_path_warns_with_the_new_one_and_gives_its_module(old: str, fresh_import) -> None:
    homes = MOVED[old]
    with pytest.warns(DeprecationWarning, match=f"{old} has moved to {homes[0]}"):
        module = fresh_import(old)
    if len(homes) == 1:
        assert module is importlib.import_module(homes[0])
    assert not (ROOT / Path(*old.split("."))).with_suffix(".py").exists(), f"{old}: a file is still at the old path"


def test_a_split_module_finds_each_name_in_its_new_home(fresh_import) -> None:
    from graft.core.vector import MANIFEST, VectorManifest
    from graft.engines.extract import extract_vector
    from graft.io.vector_folder import SafetyVector

    with pytest.warns(DeprecationWarning):
        old = fresh_import("graft.vector")
    assert (old.SafetyVector, old.VectorManifest, old.extract_vector, old.MANIFEST) == (
        SafetyVector, VectorManifest, extract_vector, MANIFEST)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = old.no_such_name


def test_from_import_of_an_old_path_gives_the_same_class(monkeypatch: pytest.MonkeyPatch) -> None:
    from graft.core.recipe import Recipe

    monkeypatch.delitem(sys.modules, "graft.recipe", raising=False)
    with pytest.warns(DeprecationWarning, match="graft.core.recipe"):
        from graft.recipe import Recipe as Old
    assert Old is Recipe


def test_the_renamed_generation_backend_keeps_its_old_name_with_a_warning() -> None:
    """`Engine` (graft.evals, graft.evals.generation) is now `HFBackend`: the old name is the same class and warns."""
    import graft.evals
    from graft.evals import generation

    for where in (graft.evals, generation):
        with pytest.warns(DeprecationWarning, match="Engine is now HFBackend"):
            assert where.Engine is generation.HFBackend
    assert "Engine" not in graft.evals.__all__ and "HFBackend" in graft.evals.__all__
    with pytest.raises(AttributeError, match="no attribute 'Engines'"):
        generation.Engines  # noqa: B018
