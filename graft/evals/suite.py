"""The evaluation suite: task registry, `evaluate()` (the Python API under `graft eval`) and its results."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from graft.errors import IncompatibleError, InputError, OutputError, UsageError

from . import figstep, scoring
from .config import DataConfig, JudgeConfig
from .generation import Engine, Request
from .judges import KeywordJudge, make_judge
from .loaders import LOADERS, Item
from .screening import Split, VerdictCache, stratified_subset
from .tasks import SUITES, TASKS, Task, samples_path
from .uncertainty import composite

# Default generation caps: a keyword judge reads only the opening of a reply (the fast path for search);
# model judges need the substance; letters and short VQA answers need little.
DEFAULT_MAX_NEW_TOKENS = {"keyword": 64, "model_judge": 256, "mc": 32, "vqa": 32}


class EvalResults(BaseModel):
    """What `graft eval` writes to results.json (samples go to a JSONL beside it)."""

    benchmarks: dict[str, dict] = Field(default_factory=dict)
    summary: dict[str, float | None] = Field(default_factory=dict)
    # Bootstrap standard error and 95 % interval of each summary score (items resampled within each task).
    summary_se: dict[str, dict | None] = Field(default_factory=dict)
    model: dict = Field(default_factory=dict)
    judge: dict | None = None
    config: dict = Field(default_factory=dict)
    timing: dict[str, dict] = Field(default_factory=dict)
    skipped: dict[str, str] = Field(default_factory=dict)
    samples: list[dict] = Field(default_factory=list, exclude=True)

    def score(self, task: str) -> float:
        return self.benchmarks[task]["score"]

    def write(self, out: str | Path, force: bool = True) -> tuple[Path, Path]:
        out = Path(out)
        samples = samples_path(out)
        if not force and out.exists():
            raise OutputError(f"{out}: exists; pass --force to overwrite")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(self.model_dump_json(indent=2), encoding="utf-8")
            tmp.replace(out)
            with samples.open("w", encoding="utf-8") as f:
                for s in self.samples:
                    f.write(json.dumps(s, ensure_ascii=False) + "\n")
        except OSError as e:
            raise OutputError(f"{out}: cannot write results ({e.strerror})") from e
        return out, samples



def resolve_tasks(tasks: Sequence[str] | str | None, suite: str | None) -> tuple[list[str], bool]:
    """The task list and whether it was named explicitly (explicit tasks never get skipped silently)."""
    if tasks and suite:
        raise UsageError("give --tasks or --suite, not both")
    if suite:
        if suite not in SUITES:
            raise UsageError(f"--suite {suite}: expected one of {', '.join(SUITES)}")
        return list(SUITES[suite]), False
    if not tasks:
        raise UsageError("nothing to evaluate: pass --tasks a,b,c or --suite safety|medical|all")
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    return list(dict.fromkeys(names)), True


def evaluate(
    model: str | Path | Engine,
    tasks: Sequence[str] | str | None = None,
    suite: str | None = None,
    data: DataConfig | str | Path | dict | None = None,
    *,
    limit: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    rest: bool = False,
    split: Split | None = None,
    judge: JudgeConfig | str = "keyword",
    mc_mode: Literal["loglik", "generate"] = "loglik",
    max_new_tokens: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    font: str | None = None,
    system_prompt: str | None = None,
    full_replies: bool = False,
    cache: str | Path | None = None,
    cache_key: str | None = None,
    out: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalResults:
    """Evaluate a model folder (or a loaded `Engine`, e.g. a resident graft in a search) on tasks or a suite.

    `cache` is a SQLite file of finished per-sample records keyed by the weights' identity: `cache_key` when
    given (e.g. a search's recipe hash, which costs nothing), else a content hash of every weight. `rest` scores
    the items the limit/fraction subset leaves out instead (report on what a search did not see). `split` first
    restricts every benchmark to one part of a search/held-out split; limit, fraction and rest then apply within
    that part.
    """
    names, explicit = resolve_tasks(tasks, suite)
    if rest and limit is None and fraction is None:
        raise UsageError("--rest scores the items a --limit/--fraction subset leaves out: give one of them")
    data = _data_config(data)
    judge_cfg = JudgeConfig.parse(judge) if isinstance(judge, str) else judge
    if mc_mode not in ("loglik", "generate"):
        raise UsageError(f"--mc-mode {mc_mode}: expected loglik or generate")
    say = progress or (lambda _msg: None)
    if judge_cfg.kind == "guard" and not (Path(judge_cfg.model) / "config.json").is_file():
        raise InputError(f"--judge guard:{judge_cfg.model}: no config.json there (a Llama-Guard/Qwen3Guard folder)")

    engine = model if isinstance(model, Engine) else Engine.load(model, device=device, dtype=dtype,
                                                                  batch_size=batch_size)
    results = EvalResults()
    run: list[Task] = []
    for name in names:
        task = TASKS[name]
        if task.needs_image and not engine.is_multimodal:
            msg = (f"task '{name}' needs an image-text model, but {engine.name} is text-only "
                   "(drop the FigStep/VQA tasks or evaluate the multimodal checkpoint)")
            if explicit:
                raise IncompatibleError(msg)
            results.skipped[name] = "text-only model"
            continue
        if getattr(data, task.benchmark) is None and not explicit:
            results.skipped[name] = f"no '{task.benchmark}' entry in the data config"
            continue
        data.source(task.benchmark)  # explicit task without data: a clear UsageError now, before any work
        run.append(task)
    # Read and check every benchmark before generating anything, so a malformed file fails in seconds.
    loaded: dict[str, list[Item]] = {}
    for task in run:
        if task.benchmark not in loaded:
            loaded[task.benchmark] = LOADERS[task.benchmark](data.source(task.benchmark))
    parts = {b: split.apply(items) if split is not None else items for b, items in loaded.items()}
    subsets = {b: stratified_subset(items, limit=limit, fraction=fraction, seed=seed, rest=rest)
               for b, items in parts.items()}
    bs = batch_size or engine.batch_size
    generates = any(t.kind in ("benign", "safety", "vqa") or mc_mode == "generate" for t in run)
    if generates and not engine.has_chat_template:
        warnings.warn(f"{engine.name}: no chat template in the folder; prompts are sent as plain text", stacklevel=2)

    needs_judge = any(t.kind == "safety" for t in run)
    the_judge = make_judge(judge_cfg, device=device) if needs_judge else None
    keyword = KeywordJudge()
    model_judge = judge_cfg.kind != "keyword"
    # With the keyword judge a reply is decided once a refusal phrase appears: stop generating it there.
    early_stop = None if full_replies else (lambda text: keyword.phrase(text) is not None)
    caps = {
        "safety": max_new_tokens or DEFAULT_MAX_NEW_TOKENS["model_judge" if model_judge else "keyword"],
        "benign": max_new_tokens or DEFAULT_MAX_NEW_TOKENS["keyword"],
        "mc": max_new_tokens or DEFAULT_MAX_NEW_TOKENS["mc"],
        "vqa": max_new_tokens or DEFAULT_MAX_NEW_TOKENS["vqa"],
    }
    store = VerdictCache(cache) if cache else None
    model_hash = (cache_key or engine.fingerprint()) if store else None

    for task in run:
        t0 = time.perf_counter()
        items = subsets[task.benchmark]
        settings = {"kind": task.kind, "figstep": task.figstep, "cap": caps[task.kind], "mc_mode": mc_mode,
                    "judge": the_judge.describe() if (the_judge and task.kind == "safety") else None,
                    "font": font, "system_prompt": system_prompt, "full_replies": full_replies}
        keys = [VerdictCache.key(model_hash, task.name, it, settings) for it in items] if store else []
        cached = store.get_many(keys) if store else {}
        todo = [i for i, it in enumerate(items) if not store or keys[i] not in cached]
        say(f"{task.name}: {len(items)} items ({len(items) - len(todo)} cached)")
        fresh, n_tokens = _run_task(task, [items[i] for i in todo], engine, the_judge, keyword, caps[task.kind],
                                    mc_mode, font, system_prompt, early_stop, model_judge, bs)
        records: list[dict] = []
        by_index = dict(zip(todo, fresh, strict=True))
        for i, _it in enumerate(items):
            records.append(by_index[i] if i in by_index else cached[keys[i]])
        if store and fresh:
            store.put_many({keys[i]: rec for i, rec in by_index.items()})
        summary = {
            "safety": scoring.summarize_safety, "benign": scoring.summarize_benign,
            "vqa": scoring.summarize_vqa,
        }.get(task.kind)
        results.benchmarks[task.name] = summary(records) if summary else scoring.summarize_mc(records, mc_mode)
        results.benchmarks[task.name]["total_items"] = len(loaded[task.benchmark])
        if split is not None:
            results.benchmarks[task.name]["part_items"] = len(parts[task.benchmark])
        seconds = time.perf_counter() - t0
        results.timing[task.name] = {"seconds": round(seconds, 3), "items_per_s": round(len(items) / seconds, 3),
                                     "generated_tokens": n_tokens, "cached": len(items) - len(todo)}
        results.samples += [{"task": task.name, **r} for r in records]
        say(f"{task.name}: score {results.benchmarks[task.name]['score']:.4f} ({seconds:.1f}s)")
    if store:
        store.close()

    results.summary = _summary(results.benchmarks)
    results.summary_se = _summary_uncertainty(results.samples, seed)
    results.model = {"path": engine.name, "class": type(engine.model).__name__,
                     "dtype": str(next(engine.model.parameters()).dtype).replace("torch.", ""),
                     "device": str(engine.device), "multimodal": engine.is_multimodal,
                     "chat_template": engine.has_chat_template, "content_hash": model_hash}
    results.judge = the_judge.describe() if the_judge else {"name": judge_cfg.kind, "used": False}
    results.config = {"tasks": [t.name for t in run], "limit": limit, "fraction": fraction, "seed": seed,
                      "rest": rest, "split": split.describe() if split is not None else None,
                      "mc_mode": mc_mode, "max_new_tokens": caps,
                      "system_prompt": system_prompt, "full_replies": full_replies,
                      "batch_size": bs,
                      "figstep_font": str(figstep.load_font(font).path) if any(t.figstep for t in run) else None,
                      "data": {t.benchmark: str(data.source(t.benchmark)) for t in run}}
    if out is not None:
        results.write(out)
    return results


def _data_config(data: DataConfig | str | Path | dict | None) -> DataConfig:
    if data is None:
        raise UsageError("no data config: pass --data data.yaml (see docs/evaluation.md)")
    if isinstance(data, DataConfig):
        return data
    if isinstance(data, dict):
        return DataConfig.from_mapping(data)
    return DataConfig.from_yaml(data)


def _summary(benchmarks: dict[str, dict]) -> dict[str, float | None]:
    def mean(names: list[str]) -> float | None:
        vals = [benchmarks[n]["score"] for n in names if n in benchmarks]
        return sum(vals) / len(vals) if vals else None

    return {"safety": mean([n for n in TASKS if TASKS[n].kind == "safety"]),
            "medical": mean(SUITES["medical"]),
            "over_refusal": benchmarks["benign"]["over_refusal"] if "benign" in benchmarks else None}


SUMMARY_SEED = 1  # bootstrap seed of the summary scores' intervals (mixed with the subset's seed)


def _summary_uncertainty(samples: list[dict], seed: int) -> dict[str, dict | None]:
    """SE and 95 % interval of `_summary`'s scores from the per-sample records (same tasks, same averaging)."""
    per_task: dict[str, list[float]] = {}
    for s in samples:
        per_task.setdefault(s["task"], []).append(scoring.item_outcome(TASKS[s["task"]].kind, s))

    def estimate(names: list[str], invert: bool = False) -> dict | None:
        tasks = {n: per_task[n] for n in names if n in per_task}
        if not tasks:
            return None
        est = composite(tasks, seed=SUMMARY_SEED + seed).as_dict()
        if invert:  # over-refusal = 1 − the benign score
            est.update(value=1 - est["value"], low=1 - est["high"], high=1 - est["low"])
        return est

    return {"safety": estimate([n for n in TASKS if TASKS[n].kind == "safety"]),
            "medical": estimate(SUITES["medical"]),
            "over_refusal": estimate(["benign"], invert=True)}


def _run_task(task: Task, items: list[Item], engine: Engine, judge, keyword: KeywordJudge, cap: int,
              mc_mode: str, font: str | None, system: str | None,
              refusal_stop: Callable[[str], bool] | None, model_judge: bool, bs: int) -> tuple[list[dict], int]:
    """Fresh per-sample records for `items` (already screened, not cached), and the tokens generated."""
    if not items:
        return [], 0
    base = [{"id": it.id, "category": it.category} for it in items]
    if task.kind in ("safety", "benign"):
        if task.figstep:
            reqs = [Request(figstep.FIGSTEP_PROMPT, image=figstep.render(it.prompt, font), system=system)
                    for it in items]
        else:
            reqs = [Request(it.prompt, system=system) for it in items]
        # A model judge reads whole replies; over-refusal always uses the keyword detector, so may stop early.
        stop = None if (task.kind == "safety" and model_judge) else refusal_stop
        gens = engine.generate(reqs, max_new_tokens=cap, batch_size=bs, stop_when=stop)
        replies = [g.text for g in gens]
        refusals = [keyword.refusal(r) for r in replies]
        verdicts = judge.judge([it.prompt for it in items], replies) if task.kind == "safety" else None
        recs = []
        for i, it in enumerate(items):
            rec = {**base[i], "prompt": reqs[i].prompt if not task.figstep else it.prompt,
                   "response": replies[i], "n_tokens": gens[i].n_tokens, "refused": refusals[i] is not None}
            if task.figstep:
                rec["figstep_text"] = figstep.typeset(figstep.to_statement(it.prompt))
                rec["text_prompt"] = figstep.FIGSTEP_PROMPT
            rec["verdict"] = verdicts[i].to_dict() if verdicts else {"refused": refusals[i] is not None,
                                                                     "detail": refusals[i] or ""}
            recs.append(rec)
        return recs, sum(g.n_tokens for g in gens)
    if task.kind == "vqa":
        reqs = [Request(it.prompt + scoring.VQA_SUFFIX, image=it.load_image(), system=system) for it in items]
        gens = engine.generate(reqs, max_new_tokens=cap, batch_size=bs)
        recs = []
        for i, it in enumerate(items):
            s = scoring.score_vqa(it, gens[i].text)
            recs.append({**base[i], "prompt": reqs[i].prompt, "response": gens[i].text, "answer": it.answer,
                         "verdict": s, **s})
        return recs, sum(g.n_tokens for g in gens)
    if mc_mode == "loglik":
        pairs, spans = [], []
        for it in items:
            ctx = scoring.mc_context(it)
            spans.append((len(pairs), len(it.choices)))
            pairs += [(ctx, " " + t) for t in scoring.mc_targets(it)]
        lls = engine.loglikelihood(pairs, batch_size=bs)
        recs = []
        for i, it in enumerate(items):
            start, n = spans[i]
            s = scoring.score_loglik(it, [ll for ll, _ in lls[start:start + n]])
            recs.append({**base[i], "prompt": pairs[start][0], "response": s["pred"], "answer": it.answer,
                         "verdict": {"correct": s["correct"]}, **s})
        return recs, 0
    reqs = [Request(scoring.mc_generation_prompt(it), system=system) for it in items]
    gens = engine.generate(reqs, max_new_tokens=cap, batch_size=bs)
    recs = []
    for i, it in enumerate(items):
        pred = scoring.extract_choice(gens[i].text, it)
        recs.append({**base[i], "prompt": reqs[i].prompt, "response": gens[i].text, "answer": it.answer,
                     "pred": pred, "correct": pred == it.answer, "verdict": {"correct": pred == it.answer}})
    return recs, sum(g.n_tokens for g in gens)
