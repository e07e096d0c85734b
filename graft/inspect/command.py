"""`graft inspect`: the CLI layer over graft.inspect (scores, λ, study importances, report folder).

Registered in graft/cli.py with `app.command("inspect")(handles_errors(inspect_command))`; errors surface as
`GraftError`s, which the app turns into one line and an exit code. Heavy imports (pandas, matplotlib, optuna) wait
until the command runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from graft.errors import InputError, UsageError

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)


def inspect_command(
    vector: Annotated[str | None, typer.Option(
        "--vector", help="Vector folder written by `graft extract` (default: the one a `graft search` study names).")
    ] = None,
    target: Annotated[str | None, typer.Option(
        "--target", "-t", help="Target model folder or hub id; without it, only what vector.json holds.")] = None,
    origin: Annotated[str | None, typer.Option(
        "--origin", help="Model the target was fine-tuned from: adds cos(τ, τ_med) and the Safe-LoRA score.")] = None,
    recipe: Annotated[Path | None, typer.Option(
        "--recipe", "-r", help="Recipe YAML: λ per layer × group (and target/vector/origin/mapping if not given).")
    ] = None,
    map: Annotated[list[str] | None, typer.Option(
        "--map", help="Name rule 'REGEX=>REPLACEMENT' applied to vector names (re.sub); repeatable.")] = None,
    study: Annotated[str | None, typer.Option(
        "--study", help="Optuna study (of `graft search`): λ of one trial and parameter importances; may be left out "
        "when the storage holds one study.")] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="The study's storage: an optuna URL (sqlite:///search.db) or a database/journal file.")
    ] = None,
    trial: Annotated[int | None, typer.Option(
        "--trial", help="Trial whose λ to show (default: a `graft search` study's best, as in best_recipe.yaml; "
        "other studies: the best trial, or the safest Pareto-optimal one).")
    ] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Report folder to write (CSV + PNG); without it only the summary is printed.")] = None,
    top: Annotated[int, typer.Option("--top", help="Rows of the summary: the layer × group cells with the largest "
                                     "‖τ‖/‖θ‖ (or |λ|·‖τ‖/‖θ‖ when λ is known).")] = 10,
    safelora: Annotated[bool, typer.Option(
        "--safelora/--no-safelora", help="Compute the Safe-LoRA score (needs --origin; one float64 matrix product "
        "per weight matrix: fast on a GPU, slow on CPU for large models).")] = True,
    device: Annotated[str, typer.Option("--device", help="Compute device: auto, cpu or cuda.")] = "auto",
    chunk_size: Annotated[str | None, typer.Option(
        "--chunk-size", help="Bytes of a tensor read at once; default 8MB on CPU, 64MB on CUDA.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing non-empty report folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print errors and the report path only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Tracebacks for unexpected errors.")] = False,
) -> None:
    """Per-layer × per-group scores of τ (‖τ‖, ‖τ‖/‖θ‖, cos with τ_med, Safe-LoRA), λ and study importances."""
    from graft.cli import build_recipe
    from graft.vector import SafetyVector

    from .recipe_lambdas import lambdas
    from .report import combine, write_report
    from .scores import layer_table, score_tensors, tensor_table
    from .study import choice_of, importance_of, open_study

    spec = build_recipe(recipe, target=target, vector=vector, origin=origin, map=map)
    if (study is not None or trial is not None) and storage is None:
        raise UsageError("--study/--trial need --storage, the study's optuna storage (e.g. sqlite:///search.db)")
    if top < 0:
        raise UsageError(f"--top {top}: must be 0 or more")
    opened_study = open_study(storage, study) if storage is not None else None
    choice = choice_of(opened_study, trial) if opened_study is not None else None
    if choice is not None and not spec.vector and choice.vector:  # a `graft search` study names what it searched
        spec = spec.model_copy(update={"vector": choice.vector, "target": spec.target or choice.target})
    if not spec.vector:
        raise UsageError("--vector is required (or a --recipe or `graft search` study that names a vector)")
    stats = score_tensors(spec.vector, spec.target, spec.options.origin, spec.mapping, device=device,
                          chunk_size=chunk_size, safelora=safelora)
    scores, tensors = layer_table(stats), tensor_table(stats)

    lam_table = importance = None
    no_importance = None
    if choice is not None:
        lam_recipe = spec.model_copy(update={"coefficients": choice.coefficients})
        opened = SafetyVector.open(spec.vector)
        num_layers = opened.manifest.num_layers
        opened.close()
        try:
            importance = importance_of(opened_study, num_layers=num_layers)
        except InputError as exc:  # e.g. flat scores (zero total variance): the rest of the report still holds
            no_importance = str(exc)
            stderr.print(f"[yellow]warning:[/] no parameter importances in the report: {exc}", soft_wrap=True)
    else:
        lam_recipe = spec if recipe is not None else None
    if lam_recipe is not None:
        lam_table = lambdas(lam_recipe)  # planned as `graft merge --recipe` would (vector names without a target)

    sources: dict[str, Any] = {"vector": spec.vector, "target": spec.target, "origin": spec.options.origin,
                               "recipe": str(recipe) if recipe else None}
    if choice is not None:
        sources.update(storage=storage, study=choice.study, trial=choice.trial, trial_chosen_as=choice.reason,
                       coefficients=choice.coefficients.model_dump(mode="json"))
        if no_importance:
            sources["importance"] = f"not computed: {no_importance}"
    elif lam_recipe is not None:
        sources["coefficients"] = lam_recipe.coefficients.model_dump(mode="json")
    report = None
    if out is not None:
        inputs = [p for p in (spec.vector, spec.target, spec.options.origin) if p and Path(p).exists()]
        report = write_report(out, scores=scores, lambdas=lam_table, tensors=tensors, importance=importance,
                              sources=sources, inputs=inputs, force=force)
    if quiet:
        if report is not None:
            stdout.print(str(report.out))
        return
    if choice is not None:
        stdout.print(f"λ from study {choice.study!r}, trial {choice.trial} ({choice.reason}; safety "
                     f"{_fmt(choice.safety)}, medical {_fmt(choice.medical)})")
    _print_top(combine(scores, lam_table), top, with_target=spec.target is not None)
    if report is not None:
        stdout.print(f"wrote {len(report.files)} files to {report.out}")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}"


def _print_top(table: Any, top: int, *, with_target: bool) -> None:
    import pandas as pd

    key = "update_ratio" if "update_ratio" in table.columns else "ratio"
    shown = table.sort_values(key, ascending=False, na_position="last").head(top)
    theta = "‖θ‖" if with_target else "‖θ_base‖"
    title = f"top {len(shown)} of {len(table)} layer × group cells by {'|λ|·' if key == 'update_ratio' else ''}" \
            f"‖τ‖/{theta}"
    columns = [("layer", "layer"), ("group", "group"), ("n_tensors", "tensors"), ("tau_norm", "‖τ‖"),
               ("ratio", f"‖τ‖/{theta}"), ("cos_tau_med", "cos(τ,τ_med)"), ("safelora_score", "Safe-LoRA"),
               ("lam", "λ"), ("update_ratio", "|λ|·ratio")]
    columns = [(c, h) for c, h in columns if c in table.columns and (c in ("layer", "group") or table[c].notna().any())]
    out = Table(*(h for _, h in columns), title=title)
    for _, row in shown.iterrows():
        cells = []
        for column, _ in columns:
            value = row[column]
            if column == "layer":
                cells.append("outside" if pd.isna(value) else str(int(value)))
            elif column in ("group", "n_tensors"):
                cells.append(str(value))
            else:
                cells.append(_fmt(float(value)))
        out.add_row(*cells)
    stdout.print(out)
