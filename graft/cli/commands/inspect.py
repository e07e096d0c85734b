"""`graft inspect`: the command line over graft.inspect (scores, λ, study importances, report folder). Heavy
imports (pandas, matplotlib, optuna) wait until the command runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from graft.cli.boundary import handles_errors
from graft.cli.console import stderr, stdout, warn
from graft.cli.json_output import check_json_destination, frame_records, table_console, write_json
from graft.cli.options import Force, MapOpt, Quiet, Verbose
from graft.cli.progress import PLAIN_EVERY, StepProgress
from graft.display import GraftConsole, printable, shown
from graft.flag_ranges import INSPECT, check, help_range


@handles_errors
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
    map: MapOpt = None,
    study: Annotated[str | None, typer.Option(
        "--study", help="Optuna study (of `graft search`): λ of one trial and parameter importances; may be left out "
        "when the storage holds one study.")] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="The study's storage: an optuna URL (sqlite:///search.db) or a database/journal file.")
    ] = None,
    trial: Annotated[int | None, typer.Option(
        "--trial", help="Trial whose λ to show (default: a `graft search` study's best, as in best_recipe.yaml; "
        "other studies: the best trial, or the safest Pareto-optimal one)." + help_range(INSPECT, "trial"))
    ] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Report folder to write (CSV + PNG); without it only the summary is printed.")] = None,
    top: Annotated[int, typer.Option("--top", help="Rows of the summary: the layer × group cells with the largest "
                                     "‖τ‖/‖θ‖ (or |λ|·‖τ‖/‖θ‖ when λ is known)." + help_range(INSPECT, "top"))] = 10,
    safelora: Annotated[bool, typer.Option(
        "--safelora/--no-safelora", help="Compute the Safe-LoRA score (needs --origin; one float64 matrix product "
        "per weight matrix: fast on a GPU, slow on CPU for large models).")] = True,
    device: Annotated[str, typer.Option("--device", help="Compute device: auto, cpu or cuda.")] = "auto",
    chunk_size: Annotated[str | None, typer.Option(
        "--chunk-size", help="Bytes of a tensor read at once; default 8MB on CPU, 64MB on CUDA.")] = None,
    force: Force = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write every row of the summary table (all layer × group cells, not only --top) as "
                       "JSON to this file; `-` writes it to standard output and the table to stderr.")] = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Per-layer × per-group scores of τ (‖τ‖, ‖τ‖/‖θ‖, cos with τ_med, Safe-LoRA), λ and study importances."""
    from graft.inspect.run import inspect_vector

    check(INSPECT, top=top, trial=trial)
    json_inputs = [Path(p) for p in (vector, target, origin, recipe) if p and Path(p).exists()]
    check_json_destination(json_out, json_inputs, force=force)  # before the work, not after
    bar = StepProgress(GraftConsole(stderr=True, quiet=quiet), unit="tensors", title="inspect", every=PLAIN_EVERY)

    def scored(done: int, total: int) -> None:
        if done == 1:
            bar.start(total)
        bar.advance()

    try:
        found = inspect_vector(
            vector, target=target, origin=origin, recipe=recipe, map=map, study=study, storage=storage, trial=trial,
            out=out, safelora=safelora, device=device, chunk_size=chunk_size, force=force,
            on_warning=warn, on_tensor=scored)
    finally:
        bar.stop()
    if json_out is not None:
        write_json(json_out, frame_records(found.table()), json_inputs, force=force)
    if quiet:
        if found.report is not None:
            stdout.print(shown(found.report.out))
        return
    to = table_console(json_out, stdout, stderr)
    choice = found.choice
    if choice is not None:
        name = escape(printable(repr(choice.study)))  # read from the storage: no markup, no terminal codes
        to.print(f"λ from study {name}, trial {choice.trial} ({choice.reason}; safety {_fmt(choice.safety)}, "
                 f"medical {_fmt(choice.medical)})")
    _print_top(found.table(), top, with_target=found.with_target, to=to)
    if found.report is not None:
        to.print(f"wrote {len(found.report.files)} files to {shown(found.report.out)}")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}"


def _print_top(table: Any, top: int, *, with_target: bool, to: Any = stdout) -> None:
    import pandas as pd

    key = "update_ratio" if "update_ratio" in table.columns else "ratio"
    shown = table.sort_values(key, ascending=False, na_position="last").head(top)
    theta = "‖θ‖" if with_target else "‖θ_base‖"
    title = f"top {len(shown)} of {len(table)} layer × group cells by {'|λ|·' if key == 'update_ratio' else ''}" \
            f"‖τ‖/{theta}"
    # Headers break at spaces and cells fold, so an 80-column terminal shows every column whole (never "…").
    columns = [("layer", "layer"), ("group", "group"), ("n_tensors", "tensors"), ("tau_norm", "‖τ‖"),
               ("ratio", f"‖τ‖/ {theta}"), ("cos_tau_med", "cos(τ, τ_med)"), ("safelora_score", "Safe- LoRA"),
               ("lam", "λ"), ("update_ratio", "|λ|· ratio")]
    columns = [(c, h) for c, h in columns if c in table.columns and (c in ("layer", "group") or table[c].notna().any())]
    out = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for _, header in columns:
        out.add_column(header, overflow="fold")
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
    to.print(out)
