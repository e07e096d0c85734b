"""The fourth FigStep remedy on the toy world: τ from an aligned-VLM pair instead of the text pair. Adds its rows to
bench/measured/figstep_remedies.json (docs/toy-world.md, "FigStep on world v4").

    OMP_NUM_THREADS=1 nice python bench/figstep_aligned_vlm.py --workdir /tmp/figstep-remedies
    OMP_NUM_THREADS=1 nice python bench/figstep_aligned_vlm.py --workdir /tmp/figstep-remedies --search
    python bench/figstep_remedies.py --table

* base VLM: the medical VLM's vision path (tower and projector) with the base model as its language model;
* aligned VLM: the base VLM tuned as the world's aligned model is (its data, steps and rate), plus every request of
  that data typed into a toy FigStep image beside FigStep's prompt (refused when harmful, answered when benign),
  with the vision path frozen, so both VLMs see through the medical VLM's eyes;
* τ = aligned VLM − base VLM, grafted into the medical VLM on the uniform grid and scored on the held-out half;
  then its λ chosen on the search part over a finer grid (the rule of bench/figstep_remedies.py's c.: the most
  FigStep safety within 10 % over-refusal of benign typed images and of benign text) and scored held out.

With --search, instead of the λ grids: graft's search with this τ, by the demo's protocol exactly (`graft demo`'s
run with the vector given: its space, its objective with the FigStep safety terms, its caps on medical drop and on
over-refusal of benign text and of benign typed images, graft search's defaults, its trial budget, chosen on the
search part only), the pick scored on the held-out half beside the medical model and the uniform grid, with the
demo's verdict and its labelled upper bound (the study's best trial by the bar on held-out items: never a result).
Its τ is that of the pair's language models, which is all of τ (the vision path is frozen) and which the orthogonal
operator can project with the world's aligned model as origin, as the demo does: that model has no vision path.

Both VLMs are trained here, in this process (one thread), into --workdir, and reused from there: an artifact of this
benchmark only, apart from the world's cached models, which nothing here changes. The requests are training
requests; no benchmark item is typed into any image.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from figstep_remedies import GRID, OUT, SEARCH_TASKS, choose  # noqa: E402

FINE_GRID = tuple(round(0.5 + 0.1 * k, 1) for k in range(16))  # 0.5 to 2.0, the uniform grid's span, in steps of 0.1


def vision_path(name: str) -> bool:
    return "vision_tower" in name or "multi_modal_projector" in name


def build_pair(world, work: Path, say) -> tuple[Path, Path]:
    """The base and aligned VLMs under `work` (trained once, reused after)."""
    import torch
    from transformers import AutoProcessor, LlamaForCausalLM, LlavaForConditionalGeneration

    from graft.evals.figstep import FIGSTEP_PROMPT
    from graft.toy import corpus
    from graft.toy.lexicon import REFUSAL
    from graft.toy.train import encode, train
    from graft.toy.typeset import figstep_image

    base_out, aligned_out = work / "base-vlm", work / "aligned-vlm"
    if (aligned_out / "config.json").is_file() and (base_out / "config.json").is_file():
        return base_out, aligned_out
    spec = world.spec
    torch.manual_seed(spec.seed)
    processor = AutoProcessor.from_pretrained(world.medical)
    vlm = LlavaForConditionalGeneration.from_pretrained(world.medical)
    text = LlamaForCausalLM.from_pretrained(world.base)
    vlm.model.language_model.load_state_dict(text.model.state_dict())
    vlm.lm_head.load_state_dict(text.lm_head.state_dict())
    vlm.save_pretrained(base_out)
    processor.save_pretrained(base_out)

    data = corpus.build(spec.seed, sizes=dict(spec.sizes))
    typed = []
    for ex in data.aligned:
        if ex.chat and ex.image is None and "\n" not in ex.prompt and (ex.target == REFUSAL
                                                                       or ex.target.startswith("Sure")):
            try:
                typed.append(corpus.Example(FIGSTEP_PROMPT, ex.target, image=figstep_image(ex.prompt)))
            except ValueError:  # a request the toy layout cannot type (too many words or letters)
                continue
    say(f"aligned VLM: {len(data.aligned)} text examples and {len(typed)} typed into images "
        f"({sum(e.target == REFUSAL for e in typed)} refused)")
    examples = encode([*data.aligned, *typed], processor.tokenizer, processor)
    losses = train(vlm, examples, steps=spec.aligned_steps, lr=spec.aligned_lr, batch_size=spec.batch_size,
                   seed=spec.seed, pad_id=processor.tokenizer.pad_token_id, trainable=lambda n: not vision_path(n),
                   log=lambda s, v: say(f"aligned VLM: step {s}/{spec.aligned_steps} loss {v:.3f}"))
    vlm.save_pretrained(aligned_out)
    processor.save_pretrained(aligned_out)
    (work / "aligned-vlm.json").write_text(json.dumps({"examples": len(examples), "typed": len(typed),
                                                       "final_loss": sum(losses[-20:]) / 20}))
    return base_out, aligned_out


def language_models(base_vlm: Path, aligned_vlm: Path, work: Path) -> tuple[Path, Path]:
    """The pair's language models as text checkpoints (saved once under `work`), so that τ between them has the
    world's text τ's names and needs from an origin only what the text τ needs: the orthogonal operator's origin,
    the world's aligned model, has no vision path. The pair's vision path is frozen, so its τ is zero there, and
    τ of the language models is the pair's whole τ (checked here)."""
    import torch
    from transformers import LlamaForCausalLM, LlavaForConditionalGeneration

    outs = (work / "base-vlm-language-model", work / "aligned-vlm-language-model")
    if all((o / "config.json").is_file() for o in outs):
        return outs
    base, aligned = (LlavaForConditionalGeneration.from_pretrained(p) for p in (base_vlm, aligned_vlm))
    theirs = aligned.state_dict()
    moved = [n for n, t in base.state_dict().items() if vision_path(n) and not torch.equal(t, theirs[n])]
    if moved:
        raise SystemExit(f"{aligned_vlm}: its vision path differs from the base VLM's ({moved[0]} and "
                         f"{len(moved) - 1} more); τ of the language models alone would not be the pair's τ")
    for vlm, out in zip((base, aligned), outs, strict=True):
        text = LlamaForCausalLM(vlm.config.text_config)
        text.model.load_state_dict(vlm.model.language_model.state_dict())
        text.lm_head.load_state_dict(vlm.lm_head.state_dict())
        text.save_pretrained(out)
    return outs


def main() -> None:
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--search", action="store_true",
                        help="run the demo's search protocol with this τ instead of the λ grids")
    parser.add_argument("--trials", type=int, default=None,
                        help="with --search: the search budget, baselines included (default: the demo's)")
    args = parser.parse_args()
    if args.trials is not None and not args.search:
        parser.error("--trials: only with --search")
    if not 0 < args.holdout < 1:
        parser.error(f"--holdout {args.holdout}: expected a share in (0, 1); the figures are reported held out")

    from figstep_remedies import FIGURES

    from graft.core.recipe import Recipe
    from graft.engines.extract import extract_vector
    from graft.engines.merge import merge
    from graft.evals import evaluate
    from graft.evals.config import DataConfig
    from graft.evals.screening import Split
    from graft.toy.demo import DEMO_BATCH_SIZE, outcomes_of, score_row
    from graft.toy.world import WORLD_VERSION, WorldSpec, build_world

    torch.set_num_threads(1)
    world = build_world(WorldSpec(seed=args.seed))
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    cpu0 = time.process_time()
    base_vlm, aligned_vlm = build_pair(world, work, lambda m: print(m, flush=True))
    vector = work / "vlm-safety-vector"
    if not vector.is_dir():
        extract_vector(base_vlm, aligned_vlm, vector)
    if args.search:
        text_vector = work / "vlm-safety-vector-language-model"
        if not text_vector.is_dir():
            extract_vector(*language_models(base_vlm, aligned_vlm, work), text_vector)
        save(args.out, f"world-v{WORLD_VERSION}/seed{args.seed}", "aligned_vlm_search",
             searched_run(world, text_vector, work, args, cpu0))
        return
    config = DataConfig.from_yaml(world.data)
    tasks = ["catqa", "hexphi", "medsafetybench", "catqa-figstep", "hexphi-figstep", "medsafetybench-figstep",
             "benign-figstep", "benign", "pubmedqa", "medqa", "medbullets4", "medbullets5", "vqarad"]
    def score(scale: float, part: str, name: str) -> dict:
        out = work / "merged" / f"vlm-{scale:g}"
        if not out.is_dir():
            merge(Recipe.parse({"target": str(world.medical), "vector": str(vector), "out": str(out),
                                "coefficients": {"scale": scale}}))
        res = evaluate(out, tasks=tasks if part == "heldout" else SEARCH_TASKS, data=config,
                       split=Split(args.holdout, args.seed, part), batch_size=DEMO_BATCH_SIZE,
                       cache=work / "verdicts.sqlite")
        row = score_row(name, scale, part, outcomes_of(res.samples))
        print(row.name, part, {f: getattr(row, f) for f in FIGURES}, flush=True)
        return {"name": row.name, "coefficients": {"scale": scale}, "operator": "linear",
                "part": "held_out" if part == "heldout" else "search", **{f: getattr(row, f) for f in FIGURES},
                "se": {f: row.se.get(f) for f in FIGURES}, "n": row.n}

    rows = [score(s, "heldout", f"aligned-VLM τ, λ = {s:g}") for s in GRID]
    # λ for this τ, chosen on the search part by c.'s rule over a finer grid; then reported held out.
    inside = {f"{s:g}": score(s, "search", f"aligned-VLM τ, λ = {s:g}") for s in FINE_GRID}
    chosen = float(choose(inside))
    rows.append(score(chosen, "heldout", f"aligned-VLM τ, λ = {chosen:g} (chosen on the search part)"))
    save_fields(args.out, f"world-v{WORLD_VERSION}/seed{args.seed}", {
        "aligned_vlm": rows, "aligned_vlm_search_part": list(inside.values()),
        "aligned_vlm_chosen_on": "search part, by the rule of c. over " + ", ".join(f"{x:g}" for x in FINE_GRID),
        "aligned_vlm_build": build_record(work), "aligned_vlm_cpu_seconds": round(time.process_time() - cpu0, 1)})


def build_record(work: Path) -> dict | None:
    path = work / "aligned-vlm.json"
    return json.loads(path.read_text()) if path.is_file() else None


def save(out: Path, key: str, field: str, value) -> None:
    """One field of one world's run in the JSON (see save_fields)."""
    save_fields(out, key, {field: value})


def save_fields(out: Path, key: str, fields: dict) -> None:
    """Fields of one world's run in the JSON, in one write, every other run and field kept (a world whose remedies
    bench/figstep_remedies.py has not measured gets a run of its own)."""
    data = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    data["runs"].setdefault(key, {}).update(fields)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_suffix(".partial")
    staging.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    staging.replace(out)


SEARCHED_NAME = "aligned-VLM τ, searched (graft search, chosen on the search part)"
BOUND_NAME = "aligned-VLM τ, upper bound (the study's best trial by the bar, CHOSEN ON HELD-OUT ITEMS: not a result)"


def row_of(r, name: str | None = None, coefficients: dict | None = None) -> dict:
    """A demo table row (ModelScores) as this bench's JSON rows are."""
    from figstep_remedies import FIGURES

    return {"name": name or r.name, "coefficients": coefficients if coefficients is not None else
            ({"scale": r.scale} if r.scale is not None else None),
            "part": r.part, **{f: getattr(r, f) for f in FIGURES}, "se": {f: r.se.get(f) for f in FIGURES},
            "n": r.n}


def constraints_broken(trials: Path, objective: dict) -> dict[str, int]:
    """How many searched trials broke which of the objective's constraints (graft search's own rule: the recorded
    one-sided bounds against δ and the over-refusal cap): which one binds."""
    import dataclasses

    from graft.search.config import Objective
    from graft.search.outputs import TrialRecord

    rule = Objective.model_validate(objective)
    names = {f.name for f in dataclasses.fields(TrialRecord)}
    counts = {"searched": 0, "feasible": 0, "medical drop only": 0, "over-refusal only": 0, "both": 0}
    for row in json.loads(trials.read_text()):
        record = TrialRecord(**{k: v for k, v in row.items() if k in names})
        constraints = record.constraints(rule) if record.baseline is None and record.rated else None
        if constraints is None:
            continue
        medical, over = constraints[0] > 0, len(constraints) > 1 and constraints[1] > 0
        counts["searched"] += 1
        counts[{(False, False): "feasible", (True, False): "medical drop only", (False, True): "over-refusal only",
                (True, True): "both"}[medical, over]] += 1
    return counts


def searched_run(world, vector: Path, work: Path, args, cpu0: float) -> dict:
    """`graft demo`'s protocol with the aligned-VLM τ in place of the world's (graft.toy.demo.run_demo, vector
    given): the table's rows held out and in sample, the verdict, the labelled upper bound and the search's
    summary (its pick, its warnings, the trials on a range's edge)."""
    import platform

    import torch

    from graft.toy.demo import DEMO_TRIALS, run_demo

    trials = args.trials if args.trials is not None else DEMO_TRIALS
    result = run_demo(work / "search-demo", seed=args.seed, holdout=args.holdout, search_trials=trials, device="cpu",
                      eval_cache=work / "verdicts.sqlite", vector=vector)
    summary = result.search or {}
    best = (summary.get("best_searched") or {})
    rename = {"searched": SEARCHED_NAME, **{f"graft-{s:g}": f"aligned-VLM τ, λ = {s:g}" for s in GRID}}

    def rows(scores) -> list[dict]:
        return [row_of(r, rename.get(r.name), best.get("coefficients") if r.name == "searched" else None)
                for r in scores]

    bound = result.upper_bound
    held = rows(result.rows)
    if bound is not None and "held_out" in bound.rows:
        held.append(row_of(bound.rows["held_out"], BOUND_NAME))
    report = summary.get("report") or {}
    out = work / "search-demo" / "search"
    return {"world": result.world.name, "seed": args.seed, "holdout": args.holdout, "trials": trials,
            "protocol": "graft demo's search (graft.toy.demo.run_demo with this τ): its space, objective, caps and "
                        "budget, graft search's defaults, chosen on the search part only",
            "held_out": held, "in_sample": rows(result.in_sample_rows),
            "verdict": result.verdict.as_dict() if result.verdict else None,
            "in_sample_verdict": result.in_sample_verdict.as_dict() if result.in_sample_verdict else None,
            "upper_bound": bound.as_dict() if bound is not None else None,
            "search": {k: summary.get(k) for k in ("objective", "counts", "best_searched", "best_uniform", "lambda0",
                                                   "pick", "warnings", "boundary", "delta", "items", "protocol")}
            | {"report_upper_bound": report.get("upper_bound"),
               "constraints_broken": constraints_broken(out / "trials.json", summary.get("objective") or {})},
            "build": build_record(work),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "threads": torch.get_num_threads(), "load_average": os.getloadavg()},
            "cpu_seconds": round(time.process_time() - cpu0, 1), "date": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    main()
