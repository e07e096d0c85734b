"""graft: graft a safety task vector layer-wise into (medical, multimodal) LLM checkpoints.

The Python API is the very functions the `graft` commands call (each is that command's engine; the command only
parses flags and prints)::

    import graft

    graft.extract_vector("base", "aligned", "vector")                       # graft extract
    recipe = graft.Recipe(target="med-model", vector="vector", out="merged")
    plan = graft.open_plan(recipe); ...; graft.close_plan(plan)             # graft plan
    graft.run_merge(recipe)                                                 # graft merge
    graft.evaluate("merged", suite="medical", data="data.yaml")             # graft eval
    graft.run_search(space="space.yaml", eval_config="eval.yaml", trials=40,
                     target="med-model", vector="vector")                   # graft search
    graft.inspect_vector("vector", target="med-model").table()              # graft inspect

Names resolve on first use, so `import graft` (and every `graft` command's start-up) loads neither torch nor
transformers. (`graft.engines.merge`, `graft.engines.plan`, `graft.search` and `graft.inspect` are the modules
these live in; the functions carry names of their own so that importing a module never hides a function.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from graft import _compat

__version__ = "0.1.0"

_compat.install()  # import paths that moved in 0.1 keep working, with a DeprecationWarning, for one release

# public name -> (module, attribute in that module)
_API = {
    "extract_vector": ("graft.engines.extract", "extract_vector"),
    "open_plan": ("graft.engines.merge", "open_plan"),
    "close_plan": ("graft.engines.merge", "close_plan"),
    "run_merge": ("graft.engines.merge", "merge"),
    "evaluate": ("graft.evals.suite", "evaluate"),
    "run_search": ("graft.search.run", "run_search"),
    "inspect_vector": ("graft.inspect.run", "inspect_vector"),
    "Recipe": ("graft.core.recipe", "Recipe"),
    "GraftError": ("graft.errors", "GraftError"),
}

__all__ = ["GraftError", "Recipe", "__version__", "close_plan", "evaluate", "extract_vector", "inspect_vector",
           "open_plan", "run_merge", "run_search"]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` below imports on first use
    from graft.core.recipe import Recipe
    from graft.engines.extract import extract_vector
    from graft.engines.merge import close_plan, open_plan
    from graft.engines.merge import merge as run_merge
    from graft.errors import GraftError
    from graft.evals.suite import evaluate
    from graft.inspect.run import inspect_vector
    from graft.search.run import run_search


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'graft' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
