"""`graft recipe --from-scores`: a recipe grafting only the layer × group cells an inspect report selects
(graft.inspect.select)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from graft.cli.boundary import handles_errors
from graft.cli.console import print_path, stderr, stdout, summary_table, warn
from graft.cli.json_output import check_json_destination, json_on_stdout, table_console, write_json
from graft.cli.options import Force, JsonOpt, OriginOpt, Quiet, TargetOpt, VectorOpt, Verbose
from graft.display import shown
from graft.io.guard import write_file


@handles_errors
def recipe_command(
    from_scores: Annotated[Path, typer.Option(
        "--from-scores", help="A `graft inspect --target T --origin O --out DIR` report folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Recipe YAML to write.")],
    metric: Annotated[str, typer.Option(
        help="Score of each layer × group cell: cos_tau_med (cosine between τ and the target's own update), "
             "safelora_score, safelora_min, ratio or tau_norm.")] = "cos_tau_med",
    threshold: Annotated[float, typer.Option(
        help="Graft a cell when its score is below this (see --above). Range: the metric's own, [-1, 1] for the "
             "cosines (cos_tau_med, safelora_*), ≥ 0 for ratio and tau_norm.")] = 0.0,
    above: Annotated[bool, typer.Option("--above", help="Graft cells whose score is above the threshold instead.")
                     ] = False,
    scale: Annotated[float, typer.Option("--scale", "-s", help="λ of every selected cell. Range: a finite number.")
                     ] = 1.0,
    groups: Annotated[str, typer.Option(
        help="Module groups that may be selected, comma-separated (the others get factor 0).")] = "attn,mlp",
    target: TargetOpt = None,
    vector: VectorOpt = None,
    origin: OriginOpt = None,
    json_out: JsonOpt = None,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Write a recipe that grafts τ only into the layer × group cells whose inspect score crosses a threshold
    (SafeMERGE-style selection); use it with `graft merge --recipe` or as `graft search --recipe` to search λ
    inside the selection."""
    from graft.core.recipe import LARGE_LAMBDA
    from graft.inspect.select import recipe_from_scores

    check_json_destination(json_out, [from_scores], force=force)
    chosen = tuple(g.strip() for g in groups.split(",") if g.strip())
    selection = recipe_from_scores(from_scores, metric=metric, threshold=threshold, above=above, scale=scale,
                                   groups=chosen, target=target, vector=vector, origin=origin)
    recipe = selection.recipe
    if abs(scale) > LARGE_LAMBDA:  # what `graft plan` of this recipe would say, said when it is written
        warn(f"--scale {scale:g}: λ = {scale:g} on every selected tensor is far outside what a graft uses (|λ| > "
             f"{LARGE_LAMBDA:g}); check the scale")
    inputs = [from_scores, *(p for p in (recipe.target, recipe.vector, recipe.options.origin) if p)]
    written = write_file(out, f"# Written by `graft recipe --from-scores`; {recipe.description}\n" + recipe.to_yaml(),
                         inputs=inputs, force=force)
    if json_out is not None:
        write_json(json_out, {"recipe": str(written), "scored": selection.scored, "tensors": len(selection.tensors),
                              "cells": [{"layer": layer, "group": group, "score": score}
                                        for layer, group, score in selection.cells]}, [from_scores], force=force)
    if quiet:
        if not json_on_stdout(json_out):
            print_path(written)
        return
    cells = ", ".join(f"{'-' if layer is None else layer}:{group} ({score:.3g})"
                      for layer, group, score in selection.cells[:12])
    table_console(json_out, stdout, stderr).print(summary_table("graft recipe", [
        ("recipe", shown(written)),
        ("selected", f"{len(selection.cells)} of {selection.scored} scored cells, {len(selection.tensors)} tensors"),
        ("cells", cells + (f" (+{len(selection.cells) - 12} more)" if len(selection.cells) > 12 else ""))]))
