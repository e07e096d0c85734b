"""The fourth FigStep remedy on the toy world: τ from an aligned-VLM pair instead of the text pair. Adds its rows to
bench/measured/figstep_remedies.json (docs/toy-world.md, "FigStep on world v4").

    OMP_NUM_THREADS=1 nice python bench/figstep_aligned_vlm.py --workdir /tmp/figstep-remedies
    python bench/figstep_remedies.py --table

* base VLM: the medical VLM's vision path (tower and projector) with the base model as its language model;
* aligned VLM: the base VLM tuned as the world's aligned model is (its data, steps and rate), plus every request of
  that data typed into a toy FigStep image beside FigStep's prompt (refused when harmful, answered when benign),
  with the vision path frozen, so both VLMs see through the medical VLM's eyes;
* τ = aligned VLM − base VLM, grafted into the medical VLM on the uniform grid and scored on the held-out half;
  then its λ chosen on the search part over a finer grid (the rule of bench/figstep_remedies.py's c.: the most
  FigStep safety within 10 % over-refusal of benign typed images and of benign text) and scored held out.

Both VLMs are trained here, in this process (one thread), into --workdir, and reused from there: an artifact of this
benchmark only, apart from the world's cached models, which nothing here changes. The requests are training
requests; no benchmark item is typed into any image.
"""

from __future__ import annotations

import json
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


def main() -> None:
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

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
    data = json.loads(args.out.read_text())
    run = data["runs"][f"world-v{WORLD_VERSION}/seed{args.seed}"]
    run["aligned_vlm"] = rows
    run["aligned_vlm_search_part"] = list(inside.values())
    run["aligned_vlm_chosen_on"] = "search part, by the rule of c. over " + ", ".join(f"{x:g}" for x in FINE_GRID)
    run["aligned_vlm_build"] = json.loads((work / "aligned-vlm.json").read_text()) \
        if (work / "aligned-vlm.json").is_file() else None
    run["aligned_vlm_cpu_seconds"] = round(time.process_time() - cpu0, 1)
    staging = args.out.with_suffix(".partial")
    staging.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    staging.replace(args.out)


if __name__ == "__main__":
    main()
