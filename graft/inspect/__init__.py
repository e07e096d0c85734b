"""Inspection: per-layer × per-group scores of a safety vector against a target (and its origin), the λ a recipe or
a search study assigns, and the study's parameter importances, as pandas DataFrames, CSV and PNG figures.

`graft inspect` is a thin layer over these functions; a notebook can call them just as well
(examples/inspect_layers.ipynb). Names resolve lazily so that every `graft` call does not load pandas/matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TensorStats": "scores", "inspection_plan": "scores", "layer_scores": "scores", "layer_table": "scores",
    "score_tensors": "scores", "tensor_scores": "scores", "tensor_table": "scores",
    "lambdas": "recipe_lambdas",
    "StudyChoice": "study", "open_study": "study", "param_target": "study", "study_coefficients": "study",
    "study_importance": "study",
    "depth_plot": "plots", "heatmap": "plots", "importance_plot": "plots",
    "InspectReport": "report", "combine": "report", "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'graft.inspect' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
