"""`graft search`: an Optuna search over graft coefficients (λ per layer, block, control point and group) that
restores safety while keeping medical skill. `run_search` is the API; `graft search` is a thin layer over it.

Names are resolved lazily, so `graft --help` does not import optuna.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SearchSpace": "space", "Range": "space", "Depth": "space", "SAMPLERS": "space",
    "SearchEvalConfig": "config", "Screening": "config", "Objective": "config", "Stage": "config",
    "Fidelity": "config", "Selection": "config",
    "Scorer": "objective", "TrialObjective": "objective",
    "SuiteScorer": "evaluation", "trial_recipe": "evaluation",
    "run_search": "run", "SearchResult": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'graft.search' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
