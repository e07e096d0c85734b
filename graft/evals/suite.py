"""The evaluation suite: task registry, `evaluate()` (the Python API under `graft eval`) and its results."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from graft.display import StepProgress, shows_progress
from graft.errors import GraftError, IncompatibleError, InputError, OutputError, UsageError
from graft.flag_ranges import EVAL, check
from graft.io.checkpoint import weights_sha256
from graft.io.databases import check_verdict_cache
from graft.io.guard import check_destination, note_finished, overlapping_input, write_file
from graft.io.hub import hub_source

from . import figstep
from .backend import GenerationBackend
from .benchmarks import SUITES, TASKS, benchmark
from .config import DataConfig
from .generation import HFBackend
from .judges import JudgeConfig, KeywordJudge, judge_entry, make_judge
from .kinds import KINDS, RunContext, kind_of
from .lm_eval_format import lm_eval_name, prompt_of, task_metrics, versions
from .loaders import Item
from .screening import Split, VerdictCache, stratified_subset
from .tasks import Task, samples_path
from .uncertainty import composite


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
    versions: dict[str, str | None] = Field(default_factory=dict)  # graft and the libraries behind the scores
    date: str | None = None  # when the evaluation started (UTC, ISO 8601)
    samples: list[dict] = Field(default_factory=list, exclude=True)

    def score(self, task: str) -> float:
        return self.benchmarks[task]["score"]

    def to_frame(self):
        """The scores as a pandas DataFrame, one row per task (the table `graft eval` prints): score, its standard
        error (NaN for a single item) and Wilson 95 % interval, items, metric, items/s; skipped tasks are left out
        (`skipped` says why)."""
        import pandas as pd

        rows = []
        for task, b in self.benchmarks.items():
            low, high = b.get("ci95") or (None, None)
            rows.append({"task": task, "score": b["score"], "se": b.get("se"), "ci95_low": low, "ci95_high": high,
                         "n": b["n"], "metric": b.get("metric"),
                         "items_per_s": (self.timing.get(task) or {}).get("items_per_s")})
        columns = ["task", "score", "se", "ci95_low", "ci95_high", "n", "metric", "items_per_s"]
        return pd.DataFrame(rows, columns=columns).set_index("task").astype({"se": float})

    def write(self, out: str | Path, force: bool = False, inputs: Sequence[str | Path] = (),
              lm_eval: str | Path | None = None) -> tuple[Path, Path]:
        """results.json and the samples beside it (and, with `lm_eval`, the same results in lm-eval's layout), each
        atomically, under graft's output rules (never an input, never over a file graft did not write)."""
        out = Path(out)
        samples = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in self.samples)
        written = write_file(samples_path(out), samples, inputs=inputs, force=force)
        if lm_eval is not None:
            write_file(Path(lm_eval), json.dumps(self.as_lm_eval(), indent=2, ensure_ascii=False) + "\n",
                       inputs=inputs, force=force)
        return write_file(out, self.model_dump_json(indent=2), inputs=inputs, force=force), written

    def as_lm_eval(self) -> dict:
        """These results in lm-eval's layout (`lm_eval.utils.make_table` reads them): graft.evals.lm_eval_format."""
        from .lm_eval_format import to_lm_eval

        started = datetime.fromisoformat(self.date).timestamp() if self.date else None
        return to_lm_eval(self, started=started)



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


@shows_progress(unit="items", title="eval", into="bar")
def evaluate(
    model: str | Path | GenerationBackend,
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
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    trust_remote_code: bool = False,
    lm_eval_out: str | Path | None = None,
    bar: StepProgress | None = None,
    show_progress: bool | None = None,
) -> EvalResults:
    """Evaluate a model folder (or a loaded `GenerationBackend`: an `HFBackend`, e.g. a resident graft's in a search)
    on tasks or a suite.

    `cache` is a SQLite file of finished per-sample records keyed by the weights' identity: `cache_key` when
    given (e.g. a search's recipe hash, which costs nothing), else a content hash of every weight. `rest` scores
    the items the limit/fraction subset leaves out instead (report on what a search did not see). `split` first
    restricts every benchmark to one part of a search/held-out split; limit, fraction and rest then apply within
    that part.
    `trust_remote_code` lets transformers run Python code shipped in the model folder: only for a folder you trust.
    `lm_eval_out` (with `out`) also writes the results in lm-eval's own layout there (`graft eval --format lm-eval`).
    `bar` counts the items as tasks finish (graft.display.StepProgress; the caller stops it). Without one, a
    bar of its own is shown in a Jupyter notebook (plain lines without ipywidgets), or anywhere with
    `show_progress=True`; `show_progress=False` shows none.
    `data` (a data.yaml, a mapping or a `DataConfig`) says where benchmarks live; one it leaves out, or all of them
    when it is None, is read from its public hub source (`Benchmark.public`) through `datasets` and the hub cache.

    Example::

        import graft
        results = graft.evaluate("merged", suite="medical", data="data.yaml", limit=50)
        results.benchmarks["pubmedqa"]["score"]

    With `out` and no `cache`, finished tasks are kept in OUT-stem.partial.sqlite (a verdict cache, so keyed on
    the weights' content, the task, each item and every generation and judge setting) until the results are
    written: a run that fails keeps them, and rerunning the same command scores only what is missing.
    """
    check(EVAL, limit=limit, fraction=fraction, seed=seed, max_new_tokens=max_new_tokens, batch_size=batch_size)
    names, explicit = resolve_tasks(tasks, suite)
    if rest and limit is None and fraction is None:
        raise UsageError("--rest scores the items a --limit/--fraction subset leaves out: give one of them")
    data_file = Path(data) if isinstance(data, (str, Path)) else None
    data = _data_config(data)
    inputs = _inputs(model, data, font) + ([data_file] if data_file else [])
    if lm_eval_out is not None and out is None:
        raise UsageError("lm-eval results are written beside results.json: give out as well")
    if out is not None:  # refuse a destination that cannot be written before any work, not after
        for path in (Path(out), samples_path(Path(out)), *([Path(lm_eval_out)] if lm_eval_out else [])):
            check_destination(path, inputs, force=force, folder=False)
    if cache and (overlap := overlapping_input(Path(cache), inputs)) is not None:
        raise OutputError(f"--cache {cache}: overlaps input {overlap}; keep the verdict cache outside every input")
    resume = partial_path(Path(out)) if out is not None and not cache else None
    store_file = Path(cache) if cache else resume
    if store_file is not None:
        check_verdict_cache(store_file)  # another application's database: refused before any work, never written
    judge_cfg = JudgeConfig.parse(judge) if isinstance(judge, str) else judge
    if mc_mode not in ("loglik", "generate"):
        raise UsageError(f"--mc-mode {mc_mode}: expected loglik or generate")
    say = progress or (lambda _msg: None)
    judge_kind = judge_entry(judge_cfg.kind)
    if judge_kind.check is not None:
        judge_kind.check(judge_cfg)  # e.g. a guard folder's files, refused before any work
    if font is not None:
        figstep.load_font(font)  # an unreadable --font: refused now, not when the first image is drawn

    # Read and check the text benchmarks before loading any model, so a malformed file fails in seconds (image
    # tasks wait: a text-only model skips them, and their data is then never read).
    loaded: dict[str, list[Item]] = {}
    for name in names:
        task = TASKS[name]
        if not task.needs_image and data.get(task.benchmark) is not None and task.benchmark not in loaded:
            loaded[task.benchmark] = benchmark(task.benchmark).read(data.source(task.benchmark))
    engine: GenerationBackend = (HFBackend.load(model, device=device, dtype=dtype, batch_size=batch_size,
                                             trust_remote_code=trust_remote_code)
                                 if isinstance(model, (str, Path)) else model)
    if out is not None and isinstance(model, (str, Path)) and Path(engine.name).is_dir():
        for path in (Path(out), samples_path(Path(out))):  # a hub model's cache copy is an input too
            check_destination(path, [Path(engine.name)], force=force, folder=False)
    _check_cap(max_new_tokens, engine)
    results = EvalResults(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), versions=versions())
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
        if data.get(task.benchmark) is None and not explicit:
            results.skipped[name] = f"no public hub copy of '{task.benchmark}' and no entry in the data config"
            continue
        data.source(task.benchmark)  # explicit task without data: a clear UsageError now, before any work
        run.append(task)
    # Read and check every benchmark before generating anything, so a malformed file fails in seconds.
    for task in run:
        if task.benchmark not in loaded:
            loaded[task.benchmark] = benchmark(task.benchmark).read(data.source(task.benchmark))
    parts = {b: split.apply(items) if split is not None else items for b, items in loaded.items()}
    subsets = {b: stratified_subset(items, limit=limit, fraction=fraction, seed=seed, rest=rest)
               for b, items in parts.items()}
    figstep_images = _figstep_images(data, [t for t in run if t.figstep], subsets)
    bs = batch_size or engine.batch_size
    generates = any(kind_of(t).generates(mc_mode) for t in run)
    if generates and not engine.has_chat_template:
        warnings.warn(f"{engine.name}: no chat template in the folder; prompts are sent as plain text", stacklevel=2)

    needs_judge = any(kind_of(t).judged for t in run)
    safety_judge = make_judge(judge_cfg, device=device) if needs_judge else None
    keyword = KeywordJudge()
    model_judge = judge_kind.reads_whole_reply
    # With the keyword judge a reply is decided once a refusal phrase appears: stop generating it there.
    early_stop = None if full_replies else (lambda text: keyword.phrase(text) is not None)
    caps = {name: max_new_tokens or kind.default_max_new_tokens(model_judge) for name, kind in KINDS.items()}
    if resume is not None and not resume.exists():
        check_destination(resume, inputs, folder=False)
    store = VerdictCache(cache or resume) if (cache or resume) else None
    if resume is not None:  # kept if the run stops: what an interrupted command names as left for a rerun
        note_finished(resume, "the tasks scored so far, reused when the command is rerun")
    model_hash = (cache_key or engine.fingerprint()) if store else None
    finished: list[str] = []
    if bar is not None:
        bar.start(sum(len(subsets[t.benchmark]) for t in run), len(run))

    for task in run:
        t0 = time.perf_counter()
        items = subsets[task.benchmark]
        kind = kind_of(task)
        settings = {"kind": task.kind, "figstep": task.figstep, "cap": caps[task.kind], "mc_mode": mc_mode,
                    "judge": safety_judge.describe() if (safety_judge and kind.judged) else None,
                    "font": font, "system_prompt": system_prompt, "full_replies": full_replies,
                    "figstep_images": str(figstep_images) if (task.figstep and figstep_images) else None}
        keys = [VerdictCache.key(model_hash, task.name, it, settings) for it in items] if store else []
        cached = store.get_many(keys) if store else {}
        todo = [i for i, it in enumerate(items) if not store or keys[i] not in cached]
        say(f"{task.name}: {len(items)} items ({len(items) - len(todo)} cached)")
        kept = (f"; the {len(finished)} finished task(s) ({', '.join(finished)}) are kept in {store.path}: rerun "
                "the same command to score only what is missing") if store and finished else ""
        try:
            context = RunContext(engine=engine, benchmark=benchmark(task.benchmark), judge=safety_judge,
                                 keyword=keyword, cap=caps[task.kind], mc_mode=mc_mode, font=font,
                                 system=system_prompt, refusal_stop=early_stop, model_judge=model_judge,
                                 batch_size=bs, figstep_images=figstep_images)
            fresh, n_tokens = _run_task(task, [items[i] for i in todo], context)
        except GraftError as exc:
            raise type(exc)(f"task {task.name}: {exc}{kept}") from exc
        except Exception:
            say(f"task {task.name} failed{kept}")
            raise
        records: list[dict] = []
        by_index = dict(zip(todo, fresh, strict=True))
        for i, _it in enumerate(items):
            records.append(by_index[i] if i in by_index else cached[keys[i]])
        if store and fresh:
            store.put_many({keys[i]: rec for i, rec in by_index.items()})
        results.benchmarks[task.name] = kind.summarize(records, mc_mode)
        results.benchmarks[task.name].update(task_metrics(task.name, records))  # acc, acc_stderr, ... (lm-eval's)
        results.benchmarks[task.name]["total_items"] = len(loaded[task.benchmark])
        if split is not None:
            results.benchmarks[task.name]["part_items"] = len(parts[task.benchmark])
        seconds = time.perf_counter() - t0
        results.timing[task.name] = {"seconds": round(seconds, 3), "items_per_s": round(len(items) / seconds, 3),
                                     "generated_tokens": n_tokens, "cached": len(items) - len(todo)}
        results.samples += [{"task": task.name, **r} for r in records]
        say(f"{task.name}: score {results.benchmarks[task.name]['score']:.4f} ({seconds:.1f}s)")
        finished.append(task.name)
        if bar is not None:
            bar.advance(len(items), note=f"{task.name} done")
    if store:
        store.close()

    results.summary = _summary(results.benchmarks)
    results.summary_se = _summary_uncertainty(results.samples, seed)
    origin = hub_source(engine.name)
    results.model = {**engine.describe(), "hub": origin.repo_id if origin else None,
                     "revision": origin.revision if origin else None, "content_hash": model_hash,
                     # the folder's weights as read from disk (`graft merge --results` checks it); none for a
                     # model handed in loaded (a search's trial weights are not any folder's)
                     "weights_sha256": weights_sha256(engine.name) if isinstance(model, (str, Path)) else None,
                     "tokens": _tokens(engine) if isinstance(engine, HFBackend) else None}
    results.judge = safety_judge.describe() if safety_judge else {"name": judge_cfg.kind, "used": False}
    results.config = {"tasks": [t.name for t in run], "limit": limit, "fraction": fraction, "seed": seed,
                      "rest": rest, "split": split.describe() if split is not None else None,
                      "mc_mode": mc_mode, "max_new_tokens": caps,
                      "system_prompt": system_prompt, "full_replies": full_replies,
                      "batch_size": bs,
                      "figstep_font": (str(figstep.load_font(font).path)
                                       if any(t.figstep for t in run) and not figstep_images else None),
                      "figstep_images": str(figstep_images) if figstep_images else None,
                      "data": {t.benchmark: str(data.source(t.benchmark)) for t in run},  # hub:ID (split ...) or a path
                      "task_configs": {t.name: {
                          "lm_eval_name": lm_eval_name(t.name), "prompt": prompt_of(t.name, mc_mode),
                          "system_prompt": system_prompt, "limit": limit, "fraction": fraction, "seed": seed,
                          "rest": rest, "max_new_tokens": caps[t.kind] if kind_of(t).generates(mc_mode) else None,
                          "judge": ({k: results.judge.get(k) for k in ("name", "version", "model")}
                                    if kind_of(t).judged else None)} for t in run}}
    if out is not None:
        results.write(out, force=force, inputs=inputs, lm_eval=lm_eval_out)
        if resume is not None:
            resume.unlink(missing_ok=True)
    return results


def _check_cap(max_new_tokens: int | None, engine: GenerationBackend) -> None:
    """`--max-new-tokens` within the model's context: a cap beyond it is a generation that can never end there (a
    random or broken model may never emit EOS) or positions the model has no embedding for."""
    context = engine.max_length() if max_new_tokens is not None and hasattr(engine, "max_length") else None
    if context is not None and max_new_tokens > context:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: more than {engine.name}'s context of {context} tokens; "
                         f"give at most {context}")


def _tokens(engine: HFBackend) -> dict:
    """The tokenizer's special tokens and the context length (what lm-eval records beside its scores)."""
    tok = engine.tokenizer
    return {"pad": [tok.pad_token, tok.pad_token_id], "eos": [tok.eos_token, tok.eos_token_id],
            "bos": [tok.bos_token, tok.bos_token_id], "max_length": engine.max_length()}


def partial_path(out: Path) -> Path:
    """Where `evaluate(out=...)` keeps finished tasks until the results are written."""
    return out.with_name(out.stem + ".partial.sqlite")


def _inputs(model: str | Path | GenerationBackend, data: DataConfig, font: str | None) -> list[Path]:
    """What an evaluation reads, so its outputs never land on (or in) any of it."""
    paths = [Path(model)] if isinstance(model, (str, Path)) else []
    paths += data.paths()
    paths += [Path(font)] if font else []
    return [p for p in paths if p.exists()]


def _data_config(data: DataConfig | str | Path | dict | None) -> DataConfig:
    if data is None:
        return DataConfig()  # every benchmark from its public hub source
    if isinstance(data, DataConfig):
        return data
    if isinstance(data, dict):
        return DataConfig.from_mapping(data)
    return DataConfig.from_yaml(data)


def _figstep_images(data: DataConfig, tasks: list[Task], subsets: dict[str, list[Item]]) -> Path | None:
    """The folder of ready-made FigStep images when the data config names one (checked for every item the FigStep
    tasks will score, before any generation), else None: the images are rendered."""
    if not tasks or data.figstep is None:
        return None
    folder = Path(data.figstep)
    if not folder.is_dir():
        raise InputError(f"{folder}: FigStep image folder not found (data.yaml 'figstep'); remove the entry to "
                         "render the images instead")
    for task in tasks:
        for it in subsets[task.benchmark]:
            if not (folder / f"{it.id}.png").is_file():
                raise InputError(f"{folder / (it.id + '.png')}: missing FigStep image for {task.name} item {it.id} "
                                 "(the 'figstep' folder needs one <item id>.png per item; remove the entry to "
                                 "render them instead)")
    return folder


SUMMARY = ("safety", "medical", "over_refusal")  # results.summary's keys, each kind's tasks entering one or none


def _summary_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Summary key → the tasks of `names` it averages, in registry order (the order the means add in)."""
    groups: dict[str, list[str]] = {key: [] for key in SUMMARY}
    for n, task in TASKS.items():
        if n in names and (key := kind_of(task).summary_group(task)) is not None:
            groups.setdefault(key, []).append(n)
    return groups


def _summary(benchmarks: dict[str, dict]) -> dict[str, float | None]:
    def mean(names: list[str]) -> float | None:
        vals = [kind_of(TASKS[n]).summary_value(benchmarks[n]) for n in names]
        return sum(vals) / len(vals) if vals else None

    return {key: mean(names) for key, names in _summary_groups(list(benchmarks)).items()}


SUMMARY_SEED = 1  # bootstrap seed of the summary scores' intervals (mixed with the subset's seed)


def _summary_uncertainty(samples: list[dict], seed: int) -> dict[str, dict | None]:
    """SE and 95 % interval of `_summary`'s scores from the per-sample records (same tasks, same averaging)."""
    per_task: dict[str, list[float]] = {}
    for s in samples:
        per_task.setdefault(s["task"], []).append(kind_of(TASKS[s["task"]]).outcome(s))

    def estimate(names: list[str]) -> dict | None:
        if not names:
            return None
        est = composite({n: per_task[n] for n in names}, seed=SUMMARY_SEED + seed).as_dict()
        if all(kind_of(TASKS[n]).summary_inverted for n in names):  # over-refusal = 1 − the benign score
            est.update(value=1 - est["value"], low=1 - est["high"], high=1 - est["low"])
        return est

    return {key: estimate(names) for key, names in _summary_groups(list(per_task)).items()}


def _run_task(task: Task, items: list[Item], context: RunContext) -> tuple[list[dict], int]:
    """Fresh per-sample records for `items` (already screened, not cached), and the tokens generated: the task's
    kind runs them (graft.evals.kinds)."""
    if not items:
        return [], 0
    return kind_of(task).run(task, items, context)
