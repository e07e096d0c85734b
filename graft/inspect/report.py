"""Write an inspection report folder: CSV tables, PNG figures and a small JSON index, all or nothing.

The folder is built beside the destination and renamed into place (`graft.io.guard.OutputFolder`), so a report is
never half written; an existing non-empty folder is replaced only with `force`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from graft import __version__
from graft.errors import UsageError
from graft.io.guard import OutputFolder

from .plots import depth_plot, heatmap, importance_plot, plottable
from .scores import cell_order

REPORT_FORMAT = "graft-inspect"
REPORT_FORMAT_VERSION = 1
INDEX_FILE = "inspect.json"


@dataclass(frozen=True)
class InspectReport:
    out: Path
    files: tuple[str, ...]  # relative to `out`


def combine(scores: pd.DataFrame | None = None, lambdas: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-(layer, group) table of the report: scores and λ side by side, and with both, update_ratio =
    |λ|·‖τ‖/‖θ‖, the relative change the graft makes to that part of the target."""
    if scores is None and lambdas is None:
        raise UsageError("nothing to report: give layer scores, λ or both")
    if scores is None:
        return lambdas.copy()  # type: ignore[union-attr]
    if lambdas is None:
        return scores.copy()
    table = scores.merge(lambdas.drop(columns=["n_tensors"]), on=["layer", "group"], how="outer")
    table["update_ratio"] = table["lam"].abs() * table["ratio"]
    order = sorted(range(len(table)), key=lambda i: cell_order(
        None if pd.isna(table["layer"].iloc[i]) else int(table["layer"].iloc[i]), table["group"].iloc[i]))
    return table.iloc[order].reset_index(drop=True)


def check_report_destination(out_dir: str | Path, inputs: Iterable[str | Path] = (), *, force: bool = False) -> bool:
    """Refuse a report folder that may not be written (an input, a folder graft did not make, an earlier report
    without `force`) before any scoring; returns the `force` the write will use (an empty folder is taken as is)."""
    from graft.io.guard import check_destination

    destination = Path(out_dir)
    force = force or (destination.is_dir() and not any(destination.iterdir()))
    check_destination(destination, [Path(p) for p in inputs], force=force, folder=True)
    return force


def write_report(
    out_dir: str | Path, *, scores: pd.DataFrame | None = None, lambdas: pd.DataFrame | None = None,
    tensors: pd.DataFrame | None = None, importance: pd.DataFrame | None = None,
    sources: dict[str, object] | None = None, inputs: Iterable[str | Path] = (), force: bool = False,
) -> InspectReport:
    """Write layers.csv (scores and λ per layer × group), tensors.csv, importance.csv, heatmap_*.png and depth_*.png
    per score, importance.png, and inspect.json (what went in, what came out). `inputs` are refused as
    destinations; an existing non-empty `out_dir` needs `force`."""
    destination = Path(out_dir)
    force = check_report_destination(destination, inputs, force=force)
    layers = combine(scores, lambdas)
    folder = OutputFolder(destination, inputs=[Path(p) for p in inputs], force=force, kind="inspect")
    written: list[str] = []
    with folder as staging:

        def table(name: str, frame: pd.DataFrame) -> None:
            frame.to_csv(staging / name, index=False)
            written.append(name)

        def figure(name: str, fig: Figure) -> None:
            fig.savefig(staging / name, dpi=110)
            written.append(name)

        table("layers.csv", layers)
        if tensors is not None:
            table("tensors.csv", tensors)
        if importance is not None:
            table("importance.csv", importance)
        for column in plottable(layers):
            figure(f"heatmap_{column}.png", heatmap(layers, column))
            if layers["layer"].notna().any():
                figure(f"depth_{column}.png", depth_plot(layers, column))
        if importance is not None and not importance.empty:
            figure("importance.png", importance_plot(importance))
        index = {"format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION, "graft_version": __version__,
                 "sources": sources or {}, "files": [*written, INDEX_FILE]}
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=2, default=str) + "\n")
        written.append(INDEX_FILE)
    return InspectReport(folder.destination, tuple(written))
