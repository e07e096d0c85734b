"""lm-eval task YAMLs for graft's benchmarks, scored exactly as `graft eval` scores them.

Medical multiple choice (PubMedQA, MedQA, Medbullets-4/5) is log-likelihood over graft's own prompts and choices
(acc, acc_norm); the safety sets (CatQA, HEx-PHI, MedSafetyBench) and the over-refusal set are greedy generation
judged by graft's keyword judge. Items come from graft's loaders, reading the same data config `graft eval --data`
reads (never a hub download of their own)::

    lm_eval --model hf --model_args pretrained=MODEL --apply_chat_template \\
        --include_path "$(python -m graft.evals.lm_eval_tasks)" --tasks graft_pubmedqa,graft_catqa \\
        --metadata '{"graft_data": "data.yaml"}'
"""

from __future__ import annotations

from pathlib import Path

INCLUDE_PATH = Path(__file__).resolve().parent


def include_path() -> str:
    """The folder to pass as lm-eval's --include_path (or `TaskManager(include_path=...)`)."""
    return str(INCLUDE_PATH)
