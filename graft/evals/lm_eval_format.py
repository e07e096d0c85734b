"""What lm-eval users read, from graft's results: per-metric standard errors in lm-eval's naming (`acc`,
`acc_stderr`, ...), each task's configuration, versions and provenance; and the whole results file in lm-eval's own
layout (`graft eval --format lm-eval`), so lm-eval's tooling (`lm_eval.utils.make_table`, leaderboards, W&B's
lm-eval report) reads graft's scores unchanged.

Standard errors here follow lm-eval's formula for a mean — the sample standard deviation (n − 1) over √n — so they
compare with lm-eval's own; results.json's `se` stays the binomial √(p(1 − p)/n) with its Wilson interval.
Medical tasks take lm-eval's names where lm-eval has the same task with the same prompt (`medqa_4options`,
`pubmedqa`); the rest take the names of graft's lm-eval task YAMLs (`graft_catqa`, ...).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from .benchmarks import TASKS
from .kinds import kind_of

LM_EVAL_NAMES = {"medqa": "medqa_4options", "pubmedqa": "pubmedqa"}
TASK_VERSION = 1.0  # the version graft's task YAMLs carry (graft/evals/lm_eval_tasks)
FILTER = "none"  # lm-eval's name for "no answer filter": metric keys read "acc,none"
LIBRARIES = ("graft", "torch", "transformers", "lm_eval", "optuna", "safetensors", "numpy")

def lm_eval_name(task: str) -> str:
    return LM_EVAL_NAMES.get(task, "graft_" + task.replace("-", "_"))


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's standard error of a mean: sample standard deviation (n − 1) / √n (NaN below two items)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1) / n)


def _outcome(key: str, record: dict) -> float | None:
    if key == "not_harmful":
        return 0.0 if record["verdict"]["harmful"] else 1.0
    if key == "harmful":
        return 1.0 if record["verdict"]["harmful"] else 0.0
    if key == "answered":
        return 0.0 if record["refused"] else 1.0
    if key == "refused":
        return 1.0 if record["refused"] else 0.0
    value = record.get(key)
    return None if value is None else float(bool(value))


def task_metrics(task: str, records: Sequence[dict]) -> dict[str, float]:
    """{metric: value, metric_stderr: lm-eval's SE} of one task's per-sample records."""
    out: dict[str, float] = {}
    for metric, key, _ in kind_of(TASKS[task]).lm_eval_metrics:
        values = [v for r in records if (v := _outcome(key, r)) is not None]
        if len(values) != len(records) or not values:  # e.g. acc_norm exists only for log-likelihood scoring
            continue
        out[metric] = sum(values) / len(values)
        out[f"{metric}_stderr"] = mean_stderr(values)
    return out


def prompt_of(task: str, mc_mode: str) -> str:
    """The prompt the task sends, in words (its kind says it: graft.evals.kinds)."""
    return kind_of(TASKS[task]).prompt(TASKS[task], mc_mode)


def versions() -> dict[str, str | None]:
    """The installed versions of graft and the libraries that shape its scores."""
    import sys

    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            found[name] = None
    if found["graft"] is None:  # a checkout run without installing
        from graft import __version__

        found["graft"] = __version__
    return found


def to_lm_eval(results: Any, *, started: float | None = None) -> dict[str, Any]:
    """graft's `EvalResults` (with its samples) as an lm-eval results file (`lm_eval ... --output_path` layout)."""
    by_task: dict[str, list[dict]] = {}
    for s in results.samples:
        by_task.setdefault(s["task"], []).append(s)
    config = results.config
    out: dict[str, Any] = {"results": {}, "group_subtasks": {}, "configs": {}, "versions": {}, "n-shot": {},
                           "higher_is_better": {}, "n-samples": {}}
    for task, bench in results.benchmarks.items():
        name = lm_eval_name(task)
        metrics = task_metrics(task, by_task.get(task, []))
        scores = {f"{k},{FILTER}": v if math.isfinite(v) else "N/A" for k, v in metrics.items()}  # N/A: no SE
        out["results"][name] = {"name": name, "alias": name, "sample_len": bench["n"], **scores}
        out["group_subtasks"][name] = []
        kind = kind_of(TASKS[task])
        out["configs"][name] = {
            "task": name, "graft_task": task, "output_type": kind.output_type(config.get("mc_mode")),
            "doc_to_text": prompt_of(task, config["mc_mode"]),
            "num_fewshot": 0, "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": h}
                                              for m, _, h in kind.lm_eval_metrics if m in metrics],
            "metadata": {"version": TASK_VERSION}, **config.get("task_configs", {}).get(task, {})}
        out["versions"][name] = TASK_VERSION
        out["n-shot"][name] = 0
        out["higher_is_better"][name] = {m: h for m, _, h in kind.lm_eval_metrics if m in metrics}
        out["n-samples"][name] = {"original": bench.get("total_items", bench["n"]), "effective": bench["n"]}
    model = results.model
    lib = results.versions or versions()
    now = time.time()
    out["config"] = {"model": "graft", "model_args": f"pretrained={model.get('path')},dtype={model.get('dtype')}",
                     "model_num_parameters": None, "model_dtype": model.get("dtype"),
                     "model_revision": model.get("revision"), "model_sha": model.get("content_hash"),
                     "batch_size": config.get("batch_size"), "batch_sizes": [], "device": model.get("device"),
                     "use_cache": None, "limit": config.get("limit") if config.get("limit") is not None
                     else config.get("fraction"), "bootstrap_iters": 0, "gen_kwargs": {"do_sample": False},
                     "random_seed": config.get("seed"), "numpy_seed": None, "torch_seed": None,
                     "fewshot_seed": None}
    tokens = model.get("tokens") or {}
    out.update({"git_hash": None, "upper_git_hash": None, "date": started or now,
                "tokenizer_pad_token": [str(v) for v in tokens.get("pad") or [None, None]],
                "tokenizer_eos_token": [str(v) for v in tokens.get("eos") or [None, None]],
                "tokenizer_bos_token": [str(v) for v in tokens.get("bos") or [None, None]],
                "eot_token_id": (tokens.get("eos") or [None, None])[1], "max_length": tokens.get("max_length"),
                "pretty_env_info": None,
                "transformers_version": lib.get("transformers"), "lm_eval_version": lib.get("lm_eval"),
                "graft_version": lib.get("graft"), "model_source": "graft", "model_name": model.get("path"),
                "model_name_sanitized": re.sub(r"[\"<>:/|\\?*\[\]]+", "__", str(model.get("path"))),
                "system_instruction": config.get("system_prompt"), "chat_template": None,
                "chat_template_sha": None, "start_time": started, "end_time": now,
                "total_evaluation_time_seconds": str(sum(t.get("seconds", 0) for t in results.timing.values()))})
    return out


__all__ = ["LM_EVAL_NAMES", "lm_eval_name", "mean_stderr", "prompt_of", "task_metrics",
           "to_lm_eval", "versions"]
