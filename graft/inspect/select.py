"""Score-based layer selection (SafeMERGE-style): a recipe that grafts τ only into the (layer, group) cells whose
`graft inspect` score crosses a threshold.

SafeMERGE grafts safety only where the fine-tune drifted from it: a layer whose update has a low similarity to the
safety direction. `graft inspect` already scores every cell: `cos_tau_med` (cosine between τ and the target's own
update τ_med = θ_target − θ_origin; negative where the fine-tune moved against τ) and `safelora_score` (Safe LoRA's
projection similarity). A cell is selected when its score is below the threshold (or above it, `above=True`); cells
without a score (no origin, 1-D tensors for Safe LoRA) never are.

The selection is written as `mapping.include`: one anchored pattern per target tensor of the selected cells (names
from the report's tensors.csv), so the recipe is exact in every layout, and it also works as a search prior: `graft
search --recipe selected.yaml --space ...` searches λ inside the selected cells only, since every trial is the base
recipe with new coefficients and keeps its mapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from graft.display import printable
from graft.engines.mapping import GROUPS
from graft.errors import InputError, UsageError
from graft.flag_ranges import RECIPE, Range, check, threshold_range
from graft.io.hub import looks_like_hub_id, pin
from graft.io.regular_files import check_regular
from graft.recipe import Recipe
from graft.schema import load_json_file

from .report import REPORT_FORMAT, REPORT_FORMAT_VERSION

SCORE_METRICS = ("cos_tau_med", "safelora_score", "safelora_min", "ratio", "tau_norm")
SCORE_SLACK = 1e-6  # relative: how far rounding may carry a computed score past its range
# A report holds a row per layer × group and per tensor (thousands for a 70B model, a few MB): far above that, the
# folder is not one.
MAX_REPORT_FILE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Selection:
    recipe: Recipe
    cells: list[tuple[int | None, str, float]]  # (layer, group, score) of every selected cell
    scored: int  # cells of the chosen groups with a score
    tensors: list[str]  # the target tensors the recipe grafts


def recipe_from_scores(
    report: str | Path, *, metric: str = "cos_tau_med", threshold: float = 0.0, above: bool = False,
    scale: float = 1.0, groups: tuple[str, ...] = ("attn", "mlp"), target: str | None = None,
    vector: str | None = None, origin: str | None = None,
) -> Selection:
    """The recipe grafting `scale`·τ into every cell of `groups` whose `metric` is below `threshold` (above it with
    `above`), from a `graft inspect --out` folder. Target, vector and origin default to the ones it scored."""
    folder = Path(report)
    if metric not in SCORE_METRICS:
        raise UsageError(f"--metric {metric}: expected one of {', '.join(SCORE_METRICS)}")
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise UsageError(f"--groups {','.join(groups)}: expected groups among {', '.join(GROUPS)}")
    check(RECIPE, scale=scale)
    threshold_range(metric).check(threshold)
    layers, tensors, sources = _read_report(folder)
    if metric not in layers.columns:
        raise InputError(f"{folder / 'layers.csv'}: no {metric!r} column; rerun `graft inspect` (with --origin for "
                         "cos_tau_med and safelora_score)")
    _numeric(layers, metric, folder / "layers.csv", integer=False, within=threshold_range(metric))
    chosen = layers[layers["group"].isin(groups)]
    scored = chosen[chosen[metric].notna()]
    if scored.empty:
        others = sorted(set(layers.loc[layers[metric].notna(), "group"]))
        # Scores exist, just not for these groups (a cosine is undefined where τ is zero: norms), or none at all.
        fix = (f"the report scores only {', '.join(others)}: choose among those with --groups" if others else
               "rerun `graft inspect` with --target and --origin (and --safelora for safelora_*)")
        raise InputError(f"{folder / 'layers.csv'}: no {', '.join(groups)} cell has a {metric} score; {fix}")
    hit = scored[scored[metric] > threshold] if above else scored[scored[metric] < threshold]
    side = ">" if above else "<"
    if hit.empty:
        raise UsageError(f"no {', '.join(groups)} cell has {metric} {side} {threshold:g} (scores range "
                         f"{scored[metric].min():.4g} .. {scored[metric].max():.4g}); change --threshold")
    cells = [(None if pd.isna(r.layer) else int(r.layer), str(r.group), float(getattr(r, metric)))
             for r in hit.itertuples()]
    keys = {(layer, group) for layer, group, _ in cells}
    cell_of = {str(r.tensor): (None if pd.isna(r.layer) else int(r.layer), str(r.group)) for r in tensors.itertuples()}
    names = [name for name, cell in cell_of.items() if cell in keys]
    # A cell with no tensor means the two files disagree; and were none left, an empty include would graft everything.
    with_tensors = set(cell_of.values())
    empty = sorted((k for k in keys if k not in with_tensors), key=str)
    if empty:
        layer, group = empty[0]
        raise InputError(f"{folder / 'tensors.csv'}: no tensor of the selected cell layer {layer} {group} (in "
                         "layers.csv); the two files disagree: rerun `graft inspect`")
    spec = {
        "description": f"graft recipe --from-scores: {len(cells)} of {len(scored)} scored {'/'.join(groups)} cells "
                       f"with {metric} {side} {threshold:g}",
        "target": _where(target, "target", sources, folder),
        "vector": _where(vector, "vector", sources, folder),
        "coefficients": {"scale": scale, "groups": {g: (1.0 if g in groups else 0.0) for g in GROUPS}},
        "mapping": {"include": [f"^{re.escape(name)}$" for name in names]},
    }
    if origin or sources.get("origin"):
        spec["options"] = {"origin": _where(origin, "origin", sources, folder)}
    return Selection(Recipe.parse(spec, source="graft recipe --from-scores"), cells, len(scored), names)


def _read_report(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, object]]:
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; give the --out folder of `graft inspect`")
    paths = {name: folder / name for name in ("layers.csv", "tensors.csv", "inspect.json")}
    for path in paths.values():
        if not path.is_file():
            raise InputError(f"{path}: missing; give the --out folder of `graft inspect --target T --origin O`")
        size = check_regular(path).st_size
        if size > MAX_REPORT_FILE_BYTES:
            raise InputError(f"{path}: {size} bytes, more than a `graft inspect` report holds ({MAX_REPORT_FILE_BYTES}"
                             "); give the --out folder of `graft inspect`")
    index = load_json_file(paths["inspect.json"], "the inspect index")  # strict: no NaN, no key given twice
    try:
        layers = pd.read_csv(paths["layers.csv"])
        tensors = pd.read_csv(paths["tensors.csv"])
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InputError(printable(f"{folder}: not a readable `graft inspect` report ({exc})")) from exc
    for frame, name, needed in ((layers, "layers.csv", ("layer", "group")),
                                (tensors, "tensors.csv", ("tensor", "layer", "group"))):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise InputError(f"{folder / name}: no column {missing[0]!r}; not a `graft inspect` report")
        _numeric(frame, "layer", folder / name, integer=True)
    if not isinstance(index, dict) or index.get("format") != REPORT_FORMAT:
        raise InputError(f"{paths['inspect.json']}: not a `graft inspect` index (format is not {REPORT_FORMAT!r})")
    if index.get("format_version") != REPORT_FORMAT_VERSION:
        raise InputError(f"{paths['inspect.json']}: format_version {index.get('format_version')!r}; this graft reads "
                         f"{REPORT_FORMAT_VERSION} (rerun `graft inspect` with this version)")
    sources = index.get("sources")
    return layers, tensors, sources if isinstance(sources, dict) else {}


def _numeric(frame: pd.DataFrame, column: str, path: Path, *, integer: bool, within: Range | None = None) -> None:
    """Refuse a cell that is neither empty nor a finite number (a whole one for layers, one in the score's own range
    for a score: a cosine in [−1, 1]), naming its line and column."""
    values = pd.to_numeric(frame[column], errors="coerce")
    given = frame[column].notna()
    finite = values.notna() & np.isfinite(values.astype(float))
    bad = given & (~finite | (integer and finite & (values % 1 != 0)))
    if within is not None:  # computed scores carry rounding: a cosine of 1 + 1e-15 is still a cosine
        slack = SCORE_SLACK * max(1.0, *(abs(b) for b in (within.low, within.high) if b is not None))
        low = -np.inf if within.low is None else within.low - slack
        high = np.inf if within.high is None else within.high + slack
        bad |= given & finite & ((values < low) | (values > high))
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        what = "a layer number" if integer else f"a {column} score ({within.describe()})" if within else "a number"
        cell = printable(str(frame[column].iloc[row]))[:60]
        raise InputError(f"{path}: line {row + 2}, column {column!r}: '{cell}' is not {what} (or empty); rerun "
                         "`graft inspect`")
    frame[column] = values


def _where(given: str | None, key: str, sources: dict[str, object], folder: Path) -> str:
    """A source as the recipe stores it (graft.io.hub.pin: local paths absolute, so the recipe works from any
    folder). From the report when not given: a relative path there is relative to where inspect ran, so it is
    used only if it exists from here."""
    if given:
        return pin(given) or given
    value = sources.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"{folder / 'inspect.json'}: names no {key}; pass --{key}")
    if Path(value).expanduser().exists() or looks_like_hub_id(value):
        return pin(value) or value
    raise InputError(f"{folder / 'inspect.json'}: sources.{key} {value!r} does not exist from this folder (the "
                     f"report was made elsewhere); pass --{key}")


__all__ = ["SCORE_METRICS", "Selection", "recipe_from_scores"]
