"""A search's results as pandas tables, for a notebook: the held-out report (the table `graft search` prints,
each figure with its standard error) and every trial (trials.csv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def report_frame(report: dict[str, Any] | None) -> pd.DataFrame:
    """One row per recipe (the searched one, λ = 0, each uniform λ; the labelled upper bound last, marked
    `chosen_on_held_out`), per figure its held-out and in-sample value and standard error and their gap. Empty
    without a per-item report."""
    if not report or not report.get("models"):
        return pd.DataFrame()
    rows = list(report["models"].items())
    bound = report.get("upper_bound")
    if bound:
        rows.append((f"upper bound: {bound['label']}", bound))
    table = []
    for label, model in rows:
        row: dict[str, Any] = {"recipe": label, "trial": model.get("trial"), "baseline": model.get("baseline"),
                               "best_uniform": label == report.get("best_uniform"),
                               "chosen_on_held_out": model is bound}
        for name in report["figures"]:
            for part in ("held_out", "in_sample"):
                est = (model.get(part) or {}).get(name) or {}
                row[f"{name}.{part}"] = est.get("value")
                row[f"{name}.{part}_se"] = est.get("se")
            row[f"{name}.gap"] = (model.get("gap") or {}).get(name)
        table.append(row)
    return pd.DataFrame(table).set_index("recipe")


def trials_frame(out: str | Path) -> pd.DataFrame:
    """Every trial of the study, one row each, as the search wrote trials.csv into `out`."""
    return pd.read_csv(Path(out) / "trials.csv")
