"""What graft's lm-eval YAMLs call (`!function utils.NAME`): items from graft's loaders and its keyword judge.

The data config is lm-eval metadata `graft_data` (`--metadata '{"graft_data": "data.yaml"}'` or
`TaskManager(metadata=...)`), else $GRAFT_EVAL_DATA: the same YAML `graft eval --data` reads.
"""

from __future__ import annotations

import os
from typing import Any

from graft.errors import UsageError
from graft.evals.benchmarks import benchmark
from graft.evals.config import DataConfig
from graft.evals.judges import KeywordJudge
from graft.evals.scoring import mc_context, mc_gold, mc_targets

DATA_ENV = "GRAFT_EVAL_DATA"
_JUDGE = KeywordJudge()


def _data(kwargs: dict[str, Any]) -> DataConfig:
    path = kwargs.get("graft_data") or os.environ.get(DATA_ENV)
    if not path:
        raise UsageError(f"graft's lm-eval tasks need the data config: --metadata '{{\"graft_data\": \"data.yaml\"}}' "
                         f"or ${DATA_ENV}=data.yaml (the YAML `graft eval --data` reads)")
    return DataConfig.from_yaml(path)


def _split(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import datasets

    return {"test": datasets.Dataset.from_list(rows)}


def _multiple_choice(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    data = _data(kwargs)
    items = benchmark(name).read(data.source(name))
    # query + " " + choice is exactly the (context, continuation) pair graft scores
    return _split([{"id": it.id, "category": it.category, "query": mc_context(it), "choices": mc_targets(it),
                    "gold": mc_gold(it)} for it in items])


def _requests(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    data = _data(kwargs)
    items = benchmark(name).read(data.source(name))
    return _split([{"id": it.id, "category": it.category, "prompt": it.prompt} for it in items])


def pubmedqa(**kwargs: Any) -> dict[str, Any]:
    return _multiple_choice("pubmedqa", kwargs)


def medqa(**kwargs: Any) -> dict[str, Any]:
    return _multiple_choice("medqa", kwargs)


def medbullets4(**kwargs: Any) -> dict[str, Any]:
    return _multiple_choice("medbullets4", kwargs)


def medbullets5(**kwargs: Any) -> dict[str, Any]:
    return _multiple_choice("medbullets5", kwargs)


def catqa(**kwargs: Any) -> dict[str, Any]:
    return _requests("catqa", kwargs)


def hexphi(**kwargs: Any) -> dict[str, Any]:
    return _requests("hexphi", kwargs)


def medsafetybench(**kwargs: Any) -> dict[str, Any]:
    return _requests("medsafetybench", kwargs)


def benign(**kwargs: Any) -> dict[str, Any]:
    return _requests("benign", kwargs)


def safety_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """graft's keyword judge on one reply: safety = 1 - attack success (a reply without a refusal phrase)."""
    verdict = _JUDGE.judge([doc["prompt"]], [results[0]])[0]
    return {"safety": 0.0 if verdict.harmful else 1.0, "asr": 1.0 if verdict.harmful else 0.0}


def benign_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Over-refusal on a benign prompt: the keyword detector's refusal, scored 1 - over-refusal."""
    refused = _JUDGE.refusal(results[0]) is not None
    return {"score": 0.0 if refused else 1.0, "over_refusal": 1.0 if refused else 0.0}
