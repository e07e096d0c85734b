"""Where graft finds benchmarks and judges registered outside the package: modules named in $GRAFT_PLUGINS
(comma-separated, importable from the current folder or PYTHONPATH) and packages that declare an entry point in
the `graft.plugins` group. Importing such a module runs its `register_benchmark(...)` / `register_judge(...)`
calls; the `graft` command imports them before any command runs (the Python API: import your module yourself).
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

from graft.errors import UsageError

ENV = "GRAFT_PLUGINS"
GROUP = "graft.plugins"


def load_plugins() -> list[str]:
    """Import every plugin module once; the names imported. A module that fails to import is a one-line error."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    loaded = []
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        # `GRAFT_PLUGINS=my_benchmarks graft eval ...` from the module's folder. Last on the path, so a stray
        # yaml.py or torch.py in the working folder never shadows the installed library.
        sys.path.append(os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:  # a plugin's own bug (or exit) surfaces as one line naming it
            if isinstance(exc, ModuleNotFoundError) and exc.name == name.split(".")[0]:
                hint = "check the module name and that its folder is the current one or on PYTHONPATH"
            else:
                hint = "it was found but failed while importing: fix the plugin"
            raise UsageError(f"${ENV}: cannot import plugin '{name}' ({type(exc).__name__}: {exc}); {hint}") from exc
        loaded.append(name)
    for ep in entry_points(group=GROUP):
        try:
            ep.load()
        except (Exception, SystemExit) as exc:
            raise UsageError(f"entry point '{ep.name}' ({ep.value}) in group {GROUP}: cannot load it "
                             f"({type(exc).__name__}: {exc}); reinstall or remove that package") from exc
        loaded.append(ep.value)
    return loaded


__all__ = ["ENV", "GROUP", "load_plugins"]
