"""Import paths that moved, kept working for one release: importing an old path warns (DeprecationWarning) with the
new one and gives the module that now lives there.

The one place such shims live: a finder on `sys.meta_path` answers only for the names in `MOVED`, so no file is left
at an old path. A path whose module was split (graft.vector: the format, the folder reader and extraction) gives a
module that looks each name up in the new modules, in order.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from typing import Any

# old import path -> the module(s) its names live in now (first match wins)
MOVED: dict[str, tuple[str, ...]] = {
    "graft.recipe": ("graft.core.recipe",),
    "graft.recipe_flags": ("graft.core.recipe_flags",),
    "graft.vector": ("graft.core.vector", "graft.io.vector_folder", "graft.engines.extract"),
    "graft.vector_card": ("graft.engines.vector_card",),
    "graft.modelcard": ("graft.engines.model_card",),
    "graft.demo": ("graft.toy.demo",),
    "graft.tracking": ("graft.io.tracking",),
    "graft.devices": ("graft.io.devices",),
    "graft.databases": ("graft.io.databases",),
    "graft.plugins": ("graft.cli.plugins",),
    "graft.progress": ("graft.cli.progress",),
    "graft.report": ("graft.cli.plan_report",),
    "graft.engines.mapping": ("graft.core.mapping",),
    "graft.engines.operators": ("graft.core.operators",),
    "graft.engines.ops": ("graft.core.arithmetic",),
    "graft.io.dtypes": ("graft.core.dtypes",),
    "graft.io.regular_files": ("graft.regular_files",),
    "graft.io.publish": ("graft.cli.publish",),
    "graft.evals.command": ("graft.cli.commands.eval",),
    "graft.search.command": ("graft.cli.commands.search",),
    "graft.inspect.command": ("graft.cli.commands.inspect",),
    "graft.toy.layouts": ("graft.testing.layouts",),
}


class _Split(types.ModuleType):
    """An old module whose names now live in several modules."""

    def __init__(self, name: str, homes: tuple[str, ...]) -> None:
        super().__init__(name, f"Moved: its names now live in {', '.join(homes)}.")
        self._homes = homes

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        for home in self._homes:
            module = importlib.import_module(home)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        homes = MOVED[spec.name]
        warnings.warn(f"{spec.name} has moved to {' / '.join(homes)}; the old import path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(homes[0]) if len(homes) == 1 else _Split(spec.name, homes)

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # the new module ran when it was imported


def install() -> None:
    """Put the finder first, so an old path is never found as a stale file of an older install."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())


__all__ = ["MOVED", "install"]
