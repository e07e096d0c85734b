"""The two figures a study is read by, written by `graft search` itself into its output folder (as Optuna's
`plot_optimization_history` and `plot_pareto_front` show them, in graft's terms): `history.png`, each rated trial's
safety by trial number with the running best feasible one, and `pareto.png`, medical skill against safety with
the front and the baselines named. In sample: the figures the search chose on.

Drawn on `matplotlib.figure.Figure` directly (Agg when saved), never through pyplot, like graft.inspect's plots."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from .config import Objective

# The records are graft.search.outputs.TrialRecord, which calls this module: typed loosely, imported not at all.
Records = Sequence[Any]

FIGURES = ("history.png", "pareto.png")


def history_figure(recs: Records, objective: Objective) -> Figure:
    rated = [r for r in recs if r.rated]
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for label, keep, style in (("feasible", True, {"color": "tab:blue"}),
                               ("infeasible", False, {"color": "tab:red", "marker": "x"})):
        shown = [r for r in rated if bool(r.feasible(objective) is not False) == keep and r.baseline is None]
        ax.scatter([r.number for r in shown], [r.safety for r in shown], s=18, label=f"searched, {label}", **style)
    base = [r for r in rated if r.baseline is not None]
    ax.scatter([r.number for r in base], [r.safety for r in base], s=30, marker="s", color="tab:grey",
               label="baselines (λ = 0, uniform λ)")
    best, xs, ys = None, [], []
    for r in sorted(rated, key=lambda r: r.number):
        if r.feasible(objective) is not False and (best is None or (r.safety or 0) > best):
            best = r.safety
        if best is not None:
            xs.append(r.number)
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", linewidth=1.2, label="best feasible so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("safety (in sample)")
    ax.set_title("optimisation history")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def pareto_figure(recs: Records, front: Records) -> Figure:
    rated = [r for r in recs if r.rated]
    front = sorted(front, key=lambda r: r.medical or 0)
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([r.medical for r in rated], [r.safety for r in rated], s=14, color="tab:grey", alpha=0.6,
               label="trials")
    ax.plot([r.medical for r in front], [r.safety for r in front], "o-", color="tab:blue", label="Pareto front")
    for r in rated:
        if r.baseline is not None:
            ax.annotate(r.baseline, (r.medical, r.safety), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("medical skill (in sample)")
    ax.set_ylabel("safety (in sample)")
    ax.set_title("safety against medical skill")
    ax.legend(fontsize=8)
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def study_figures(recs: Records, front: Records, objective: Objective) -> dict[str, bytes]:
    """history.png and pareto.png as PNG bytes (none without a rated trial); `front`: the Pareto-optimal records."""
    if not any(r.rated for r in recs):
        return {}
    return {"history.png": png(history_figure(recs, objective)), "pareto.png": png(pareto_figure(recs, front))}
