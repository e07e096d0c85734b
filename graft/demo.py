"""`graft demo`: the whole extract → plan → merge path on a generated tiny example, with no download.

The example is a tiny Qwen2 base/instruct pair and a tiny Qwen2-VL "medical" model built from the instruct one
(random weights: this shows the mechanics and checks the output, not safety behaviour; the trained toy world that
shows safety forgetting comes with `graft.toy`'s world builder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from graft.checkpoint import Checkpoint
from graft.errors import OutputError
from graft.merge import merge
from graft.plan import build_plan
from graft.recipe import Recipe
from graft.report import print_plan_summary
from graft.toy.layouts import TextSpec, build_target, build_text_pair
from graft.vector import SafetyVector, extract_vector

DEMO_SCALES = (0.25, 0.5, 1.0)


MARKER = ".graft-demo"


def run_demo(workdir: Path, *, console: Console | None = None) -> dict[str, Path]:
    """Build the example under `workdir`, merge it at a few scales, reload each result with transformers.

    A previous demo folder is rebuilt; any other non-empty folder is refused, never deleted.
    """
    import transformers

    transformers.utils.logging.disable_progress_bar()
    console = console or Console()
    workdir = Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise OutputError(f"{workdir}: exists and was not made by graft demo; choose another --workdir")
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `graft demo`; the demo deletes and rebuilds this folder\n")
    spec = TextSpec(family="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=6)

    console.rule("[bold]1. tiny models")
    base, aligned = build_text_pair(workdir / "general", spec)
    origin, target = build_target("qwen2_vl", workdir / "medical", aligned, spec, extra_vocab=16, with_origin=True,
                                  max_shard_size="300KB")
    console.print(f"base {base}\naligned {aligned}\nmedical VLM (Qwen2-VL layout, grown vocabulary) {target}")

    console.rule("[bold]2. graft extract")
    result = extract_vector(base, aligned, workdir / "safety-vector")
    manifest = result.manifest
    console.print(f"τ = aligned − base: {len(manifest.tensors)} tensors over {manifest.num_layers} layers, "
                  f"‖τ‖ = {manifest.total_norm:.4g} → {result.out}")

    console.rule("[bold]3. graft plan")
    recipe = Recipe.parse({"target": str(target), "vector": str(result.out),
                           "coefficients": {"scale": 1.0, "control_points": [0.5, 1.0]}})
    with Checkpoint.open(target) as ckpt:
        vector = SafetyVector.open(result.out)
        print_plan_summary(build_plan(ckpt, vector, recipe), console)
        vector.close()

    console.rule("[bold]4. graft merge, reload with transformers")
    outputs = {}
    table = Table("scale", "output", "grafted", "copied", "reloads", "‖θ' − θ‖")
    variants = [(f"{s:g}", recipe.updated(coefficients={"scale": s}), f"merged-scale-{s:g}") for s in DEMO_SCALES]
    orthogonal = recipe.updated(options={"origin": str(origin), "orthogonalize": True})
    variants.append(("1, orthogonal to target − origin", orthogonal, "merged-orthogonal"))
    for label, variant, name in variants:
        merged = merge(variant.updated(out=str(workdir / name)))
        outputs[label] = merged.out
        table.add_row(label, merged.out.name, str(merged.grafted), str(merged.copied), *_check(target, merged.out))
    console.print(table)
    console.print("Each output is a normal Hugging Face folder with graft_recipe.yaml and a model card (README.md).")
    return outputs


def _check(target: Path, out: Path) -> tuple[str, str]:
    """Reload with transformers (no missing/unexpected keys) and measure how far the weights moved."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model, info = transformers.Qwen2VLForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    ok = not info["missing_keys"] and not info["unexpected_keys"]
    with Checkpoint.open(target) as before, Checkpoint.open(out) as after:
        moved = sum(float((after.read(n).float() - before.read(n).float()).square().sum()) for n in before.tensors)
    del model
    return ("yes" if ok else f"NO: {info}"), f"{torch.tensor(moved).sqrt().item():.4g}"
