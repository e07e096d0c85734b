"""Evaluation suite: safety (CATQA, HEx-PHI, MedSafetyBench, their FigStep variants, over-refusal) and medical
skill (PubMedQA, MedQA, Medbullets, VQA-RAD). `evaluate()` is the API; `graft eval` is a thin layer over it."""

from .config import DataConfig, HubSource, JudgeConfig, fixture_data
from .generation import Engine, Generation, Request
from .suite import SUITES, TASKS, EvalResults, evaluate

__all__ = [
    "SUITES",
    "TASKS",
    "DataConfig",
    "Engine",
    "EvalResults",
    "Generation",
    "HubSource",
    "JudgeConfig",
    "Request",
    "evaluate",
    "fixture_data",
]
