"""Figures of the inspection tables: layer × group heatmaps, lines over depth, importance bars.

Built on `matplotlib.figure.Figure` directly (rendered by Agg when saved), never through pyplot: no global figure
state, no backend switch, so a notebook's own matplotlib set-up is left alone.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from graft.core.mapping import GROUPS

# column -> (label, colour map, diverging around 0)
PLOTTED: dict[str, tuple[str, str, bool]] = {
    "tau_norm": ("‖τ‖", "viridis", False),
    "ratio": ("‖τ‖ / ‖θ‖", "viridis", False),
    "cos_tau_med": ("cos(τ, τ_med)", "RdBu_r", True),
    "safelora_score": ("Safe-LoRA score cos(Cτ_med, τ_med)", "magma", False),
    "lam": ("λ", "cividis", False),
    "update_ratio": ("|λ|·‖τ‖ / ‖θ‖", "viridis", False),
}
OUTSIDE = "outside"  # row label of tensors outside the layer stack (embeddings, head, final norm)


def plottable(table: pd.DataFrame) -> list[str]:
    """The columns of `table` worth a figure: known, and not entirely missing."""
    return [c for c in PLOTTED if c in table.columns and table[c].notna().any()]


def _grid(table: pd.DataFrame, column: str) -> tuple[np.ndarray, list[str], list[str]]:
    layers = sorted({int(v) for v in table["layer"].dropna()})
    has_outside = bool(table["layer"].isna().any())
    groups = [g for g in GROUPS if g in set(table["group"])]
    row_labels = [str(layer) for layer in layers] + ([OUTSIDE] if has_outside else [])
    grid = np.full((len(row_labels), len(groups)), np.nan)
    for layer, group, value in zip(table["layer"], table["group"], table[column], strict=True):
        row = len(layers) if pd.isna(layer) else layers.index(int(layer))
        grid[row, groups.index(group)] = np.nan if pd.isna(value) else float(value)
    return grid, row_labels, list(groups)


def heatmap(table: pd.DataFrame, column: str, title: str | None = None) -> Figure:
    """Layers down, groups across; grey where a cell has no value."""
    label, cmap_name, diverging = PLOTTED.get(column, (column, "viridis", False))
    grid, rows, groups = _grid(table, column)
    fig = Figure(figsize=(1.6 + 1.1 * len(groups), 1.4 + 0.32 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(grid)
    finite = grid[np.isfinite(grid)]
    limits: dict[str, float] = {}
    if diverging and finite.size:
        bound = float(np.abs(finite).max()) or 1.0
        limits = {"vmin": -bound, "vmax": bound}
    from matplotlib import colormaps

    cmap = colormaps[cmap_name].with_extremes(bad="#d9d9d9")
    image = ax.imshow(masked, aspect="auto", cmap=cmap, interpolation="nearest", **limits)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("module group")
    ax.set_ylabel("layer")
    ax.set_title(title or label)
    if grid.size <= 400:
        for (r, c), value in np.ndenumerate(grid):
            if math.isfinite(value):
                ax.text(c, r, f"{value:.3g}", ha="center", va="center", fontsize=7, color="white",
                        path_effects=_outline())
    fig.colorbar(image, ax=ax, label=label)
    return fig


def _outline() -> list:
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=1.5, foreground="black")]


def depth_plot(table: pd.DataFrame, column: str, title: str | None = None) -> Figure:
    """One line per group over layer index (tensors outside the layer stack are left out)."""
    label = PLOTTED.get(column, (column,))[0]
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    ax = fig.add_subplot()
    inside = table[table["layer"].notna() & table[column].notna()]
    for group in GROUPS:
        part = inside[inside["group"] == group].sort_values("layer")
        if not part.empty:
            ax.plot(part["layer"].astype(int), part[column].astype(float), marker="o", label=group)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel(label)
    ax.set_title(title or f"{label} over depth")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    return fig


def importance_plot(importance: pd.DataFrame, top: int = 30) -> Figure:
    """Horizontal bars of each objective's parameter importances, most important on top."""
    objectives = list(dict.fromkeys(importance["objective"]))
    tallest = max((min(top, int((importance["objective"] == o).sum())) for o in objectives), default=1)
    fig = Figure(figsize=(4.5 * max(1, len(objectives)), 1.2 + 0.3 * tallest), layout="constrained")
    for i, objective in enumerate(objectives):
        ax = fig.add_subplot(1, len(objectives), i + 1)
        part = importance[importance["objective"] == objective].nlargest(top, "importance").iloc[::-1]
        ax.barh(part["param"], part["importance"], color="#4c72b0")
        ax.set_xlabel("importance")
        ax.set_title(f"parameter importance: {objective}")
    return fig
