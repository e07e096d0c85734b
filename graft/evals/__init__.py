"""Evaluation suite: safety (CATQA, HEx-PHI, MedSafetyBench, their FigStep variants, over-refusal) and medical
skill (PubMedQA, MedQA, Medbullets, VQA-RAD). `evaluate()` is the API; `graft eval` is a thin layer over it.

Names are resolved lazily, so importing `graft.evals.command` (which every `graft` call does) does not load
transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataConfig": "config", "HubSource": "sources", "JudgeConfig": "judges", "fixture_data": "config",
    "HFBackend": "generation", "Generation": "backend", "Request": "backend",
    "EvalResults": "suite", "evaluate": "suite", "SUITES": "benchmarks", "TASKS": "benchmarks",
    "BENCHMARKS": "benchmarks", "Benchmark": "benchmarks", "register_benchmark": "benchmarks",
    "JUDGES": "judges", "Judge": "judges", "JudgeEntry": "judges", "register_judge": "judges",
    "GenerationBackend": "backend", "Engine": "generation",  # HFBackend's old name, deprecated (it warns)
}

__all__ = sorted(set(_EXPORTS) - {"Engine"})


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'graft.evals' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
