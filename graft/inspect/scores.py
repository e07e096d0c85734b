"""Per-tensor and per-(layer, group) statistics of a safety vector against a target and its origin.

The tensors, their layers and groups come from the same `GraftPlan` that `graft merge` executes (built by
`graft.engines.plan.build_plan`), so inspection, merge and search never disagree on which τ tensor lands where. Data is
streamed in row chunks through `Checkpoint.read_rows` and reduced in float64, so chunking cannot change a result
and memory stays at a few chunks (plus, for Safe-LoRA scores of wide matrices, one tensor; see `safelora_score`).

What is computed, per grafted tensor (over its grafted rows: a grown vocabulary's new rows have no τ):

* ``tau_norm`` ‖τ‖_F and ``theta_norm`` ‖θ‖_F of the target (of θ_base from `vector.json` without a target);
  ``ratio`` = ‖τ‖/‖θ‖, the relative size of the graft at λ = 1;
* with an origin, τ_med = θ_target − θ_origin (what the medical fine-tune changed): ``med_norm`` ‖τ_med‖ and
  ``cos_tau_med`` = ⟨τ, τ_med⟩ / (‖τ‖‖τ_med‖);
* ``safelora_score`` (2-D tensors, with an origin): Safe-LoRA's similarity (Hsu et al., NeurIPS 2024).
  They build the alignment matrix V = W_aligned − W_base and the projector C = V Vᵀ / ‖V‖_F, and score a fine-tuned
  update ΔW of a weight matrix by the cosine between C·ΔW and ΔW (both flattened; weights in PyTorch's
  (out, in) layout, so C is out × out and acts from the left, as in their code). Layers scoring below a
  threshold (0.35 in their code) are the ones they project. Here V = τ and ΔW = τ_med, so the score says how much
  of the medical update lies in the span of the safety vector's column space: near 1 the fine-tune moved the
  weights along the safety directions (where a graft restores what the fine-tune undid), near 0 it moved them
  elsewhere (where a graft is mostly an independent addition). The 1/‖V‖_F factor cancels in the cosine.

Per (layer, group), norms add in quadrature (‖τ‖ of the cell is the norm of all its tensors concatenated), the
cosine is that of the concatenated vectors, and the Safe-LoRA score is the mean (and minimum) over the cell's
2-D tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from graft.core.mapping import GROUPS, Group
from graft.core.recipe import Coefficients, MappingRules, Recipe
from graft.engines.merge import default_chunk_bytes
from graft.engines.plan import GraftPlan, TensorAction, build_plan
from graft.errors import IncompatibleError, UsageError
from graft.io.checkpoint import Checkpoint
from graft.io.devices import resolve_device
from graft.io.hub import resolve_model
from graft.io.pipeline import prefetch
from graft.io.vector_folder import SafetyVector
from graft.schema import parse_size

# λ = 1 for every group (vision included): the inspection plan lists every tensor the vector *could* graft.
UNIT_COEFFICIENTS = Coefficients(groups=dict.fromkeys(GROUPS, 1.0))
NAN = float("nan")


@dataclass(frozen=True)
class TensorStats:
    """Sums for one τ tensor (float64), from which every score is derived; None where an input is missing."""

    tensor: str  # target name (the vector's name without a target)
    vector_tensor: str
    layer: int | None
    group: Group
    shape: tuple[int, ...]  # of the grafted part
    tau_sq: float
    theta_sq: float
    med_sq: float | None = None  # ‖τ_med‖²
    dot: float | None = None  # ⟨τ, τ_med⟩
    safelora: float | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def inspection_plan(
    vector: SafetyVector, target: Checkpoint, origin: Checkpoint | None = None, mapping: MappingRules | None = None,
) -> GraftPlan:
    """The merge's plan with λ = 1 everywhere: names, layers and groups exactly as `graft merge` would use them.

    Only the name rules of `mapping` apply; include/exclude select what a merge grafts, which the λ table shows.
    """
    rules = MappingRules(rules=mapping.rules) if mapping is not None else MappingRules()
    plan = build_plan(target, vector, Recipe(coefficients=UNIT_COEFFICIENTS, mapping=rules), origin)
    plan.check()
    return plan


def score_tensors(
    vector: str | Path, target: str | Path | None = None, origin: str | Path | None = None,
    mapping: MappingRules | None = None, *, device: str = "auto", chunk_size: str | int | None = None,
    safelora: bool = True, on_tensor: Callable[[int, int], None] | None = None,
) -> list[TensorStats]:
    """Stream every tensor of the vector (and its target/origin partners) once; see the module docstring.
    `on_tensor(done, total)` is called as each tensor is scored (a progress bar's counts; not in vector-only mode,
    which reads nothing).

    `safelora=False` skips the Safe-LoRA score, the one part that is compute-bound: one r·n·min(r, n) float64
    matrix product per (r × n) matrix, about 110 TFLOP for a 7B model (seconds on a recent GPU, an hour or more on
    a few CPU cores); everything else is a single read of τ, target and origin.
    """
    if origin is not None and target is None:
        raise UsageError("--origin needs --target: τ_med = target − origin")
    opened = SafetyVector.open(vector)
    if target is None:
        try:
            return _from_manifest(opened)
        finally:
            opened.close()
    torch_device = resolve_device(device)
    try:
        chunk_bytes = parse_size(chunk_size) if chunk_size is not None else default_chunk_bytes(torch_device)
    except ValueError as exc:
        raise UsageError(f"--chunk-size: {exc}") from exc
    target_ckpt = Checkpoint.open(resolve_model(target, role="target"), role="target")
    origin_ckpt = Checkpoint.open(resolve_model(origin, role="origin"), role="origin") if origin is not None else None
    try:
        plan = inspection_plan(opened, target_ckpt, origin_ckpt, mapping)
        stats = []
        for action in plan.grafted:
            stats.append(_score(plan, action, torch_device, chunk_bytes, safelora))
            if on_tensor is not None:
                on_tensor(len(stats), len(plan.grafted))
        return stats
    finally:
        for checkpoint in (opened, target_ckpt, origin_ckpt):
            if checkpoint is not None:
                checkpoint.close()


def _from_manifest(vector: SafetyVector) -> list[TensorStats]:
    """Vector-only mode: ‖τ‖ and ‖θ_base‖ = ‖τ‖ / rel_norm, both recorded by `graft extract`; nothing is read."""
    stats = []
    for name, entry in vector.manifest.tensors.items():
        norm = entry.norm if entry.norm is not None else math.nan  # τ holds NaN/Inf: no norm to show
        base_sq = (norm / entry.rel_norm) ** 2 if entry.rel_norm else 0.0
        stats.append(TensorStats(name, name, entry.layer, entry.group, tuple(entry.shape), norm**2, base_sq))
    return stats


# -- one tensor -----------------------------------------------------------------------------------------------------
def _score(plan: GraftPlan, action: TensorAction, device: torch.device, chunk_bytes: int, safelora: bool
           ) -> TensorStats:
    info = plan.target.tensors[action.target]
    rows = action.rows if action.rows is not None else info.rows
    shape = (rows, *info.row_shape) if info.shape else ()
    origin = plan.origin if action.origin is not None else None
    if origin is not None and origin.tensors[action.origin].rows < rows:  # type: ignore[index]
        raise IncompatibleError(f"{origin.root}: origin tensor {action.origin!r} has fewer rows than the "
                                f"{rows} grafted into {action.target!r}; the origin must be the target's base model")

    def read(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        tau = plan.vector.checkpoint.read_rows(action.donor or "", start, stop)
        theta = plan.target.read_rows(action.target, start, stop)
        base = origin.read_rows(action.origin or "", start, stop) if origin is not None else None
        return tau, theta, base

    with_origin = origin is not None
    matrix = len(shape) == 2 and with_origin and safelora
    wide = matrix and shape[1] > shape[0]
    sums = (_column_sums(read, shape, device, chunk_bytes) if wide
            else _row_sums(read, shape, device, chunk_bytes, gram=matrix))
    return TensorStats(
        action.target, action.donor or "", action.layer, action.group or "other", shape, sums.tau_sq, sums.theta_sq,
        sums.med_sq if with_origin else None, sums.dot if with_origin else None,
        sums.safelora() if matrix else None,
    )


@dataclass
class _Sums:
    tau_sq: float = 0.0
    theta_sq: float = 0.0
    med_sq: float = 0.0
    dot: float = 0.0
    numerator: float = 0.0  # ⟨ΔW, V Vᵀ ΔW⟩
    projected_sq: float = 0.0  # ‖V Vᵀ ΔW‖²

    def add(self, tau: torch.Tensor, theta: torch.Tensor, base: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Add one block (stored dtypes, on the compute device); return (τ, τ_med) in float64 when there is an
        origin, for the Safe-LoRA sums. Norms need no float64 copy: `vector_norm` accumulates in float64 itself."""
        self.tau_sq += float(torch.linalg.vector_norm(tau, dtype=torch.float64)) ** 2
        self.theta_sq += float(torch.linalg.vector_norm(theta, dtype=torch.float64)) ** 2
        if base is None:
            return ()
        tau64 = tau.to(torch.float64)
        med = theta.to(torch.float64).sub_(base.to(torch.float64))
        self.med_sq += float(torch.linalg.vector_norm(med)) ** 2
        self.dot += float(torch.dot(tau64.reshape(-1), med.reshape(-1)))
        return tau64, med

    def safelora(self) -> float:
        denominator = math.sqrt(self.med_sq * self.projected_sq)
        return self.numerator / denominator if denominator > 0 else NAN


def _row_sums(read, shape: tuple[int, ...], device: torch.device, chunk_bytes: int, *, gram: bool) -> _Sums:
    """Row chunks; for a tall matrix (in ≤ out) Safe-LoRA needs only in × in sums: G = Vᵀ ΔW and K = Vᵀ V.

    Then ⟨ΔW, V Vᵀ ΔW⟩ = ‖G‖² and ‖V Vᵀ ΔW‖² = ‖V G‖² = ⟨G, K G⟩, both exact whatever the chunking.
    """
    rows = shape[0] if shape else 1
    step = max(1, chunk_bytes // (8 * max(1, math.prod(shape[1:]))))  # float64 temporaries stay within a chunk
    sums = _Sums()
    g = k = None
    if gram:
        g = torch.zeros(shape[1], shape[1], dtype=torch.float64, device=device)
        k = torch.zeros_like(g)
    for n, (tau, theta, base) in prefetch(_chunks(read, rows, step)):
        as_rows = [None if x is None else x.to(device).reshape(n, -1) for x in (tau, theta, base)]
        blocks = sums.add(*as_rows)  # type: ignore[arg-type]
        if g is not None and k is not None and blocks:
            tau64, med = blocks
            g.addmm_(tau64.T, med)
            k.addmm_(tau64.T, tau64)
    if g is not None and k is not None:
        sums.numerator = float(g.square().sum())
        sums.projected_sq = float((g * (k @ g)).sum())
    return sums


def _column_sums(read, shape: tuple[int, ...], device: torch.device, chunk_bytes: int) -> _Sums:
    """A wide matrix (in > out, e.g. mlp.down_proj): the out × out sums P = V Vᵀ and Q = ΔW ΔWᵀ are smaller than
    in × in ones but need whole rows, so this one tensor is read whole (in its stored dtype) and reduced over
    column blocks: ⟨ΔW, V Vᵀ ΔW⟩ = ⟨P, Q⟩ and ‖V Vᵀ ΔW‖² = ⟨P P, Q⟩."""
    rows, cols = shape
    tau, theta, base = (x.to(device) for x in read(0, rows))
    width = max(1, chunk_bytes // (8 * rows))
    p = torch.zeros(rows, rows, dtype=torch.float64, device=device)
    q = torch.zeros_like(p)
    sums = _Sums()
    for start in range(0, cols, width):
        block = slice(start, min(cols, start + width))
        tau64, med = sums.add(tau[:, block], theta[:, block], base[:, block])
        p.addmm_(tau64, tau64.T)
        q.addmm_(med, med.T)
    sums.numerator = float((p * q).sum())
    sums.projected_sq = float(((p @ p) * q).sum())
    return sums


def _chunks(read, rows: int, step: int) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]]:
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        yield stop - start, read(start, stop)


# -- tables ---------------------------------------------------------------------------------------------------------
def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else NAN


def tensor_table(stats: list[TensorStats]) -> pd.DataFrame:
    """One row per τ tensor, in plan order."""
    rows = []
    for s in stats:
        tau, theta = math.sqrt(s.tau_sq), math.sqrt(s.theta_sq)
        med = math.sqrt(s.med_sq) if s.med_sq is not None else NAN
        rows.append({
            "tensor": s.tensor, "vector_tensor": s.vector_tensor, "layer": s.layer, "group": s.group,
            "shape": "x".join(map(str, s.shape)), "numel": s.numel, "tau_norm": tau, "theta_norm": theta,
            "ratio": _ratio(tau, theta), "med_norm": med,
            "cos_tau_med": _ratio(s.dot, tau * med) if s.dot is not None else NAN,
            "safelora_score": s.safelora if s.safelora is not None else NAN,
        })
    table = pd.DataFrame(rows, columns=TENSOR_COLUMNS)
    table["layer"] = table["layer"].astype("Int64")
    return table


TENSOR_COLUMNS = ["tensor", "vector_tensor", "layer", "group", "shape", "numel", "tau_norm", "theta_norm", "ratio",
                  "med_norm", "cos_tau_med", "safelora_score"]
LAYER_COLUMNS = ["layer", "group", "n_tensors", "numel", "tau_norm", "theta_norm", "ratio", "med_norm",
                 "cos_tau_med", "safelora_score", "safelora_min"]


def cell_order(layer: int | None, group: str) -> tuple[bool, int, int]:
    """Layers in depth order, tensors outside the layer stack last; groups in `GROUPS` order."""
    return (layer is None, -1 if layer is None else layer, GROUPS.index(group))  # type: ignore[arg-type]


def layer_table(stats: list[TensorStats]) -> pd.DataFrame:
    """One row per (layer, group); layer is <NA> for tensors outside the layer stack (embeddings, head, final norm)."""
    cells: dict[tuple[int | None, Group], list[TensorStats]] = {}
    for s in stats:
        cells.setdefault((s.layer, s.group), []).append(s)
    rows = []
    for (layer, group), members in sorted(cells.items(), key=lambda item: cell_order(*item[0])):
        tau_sq = sum(s.tau_sq for s in members)
        theta_sq = sum(s.theta_sq for s in members)
        with_med = [s for s in members if s.med_sq is not None and s.dot is not None]
        med_sq = sum(s.med_sq for s in with_med) if with_med else None  # type: ignore[misc]
        dot = sum(s.dot for s in with_med) if with_med else None  # type: ignore[misc]
        scores = [s.safelora for s in members if s.safelora is not None and not math.isnan(s.safelora)]
        rows.append({
            "layer": layer, "group": group, "n_tensors": len(members), "numel": sum(s.numel for s in members),
            "tau_norm": math.sqrt(tau_sq), "theta_norm": math.sqrt(theta_sq),
            "ratio": _ratio(math.sqrt(tau_sq), math.sqrt(theta_sq)),
            "med_norm": math.sqrt(med_sq) if med_sq is not None else NAN,
            "cos_tau_med": _ratio(dot, math.sqrt(tau_sq * med_sq)) if med_sq is not None and dot is not None else NAN,
            "safelora_score": sum(scores) / len(scores) if scores else NAN,
            "safelora_min": min(scores) if scores else NAN,
        })
    table = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    table["layer"] = table["layer"].astype("Int64")
    return table


def tensor_scores(
    vector: str | Path, target: str | Path | None = None, origin: str | Path | None = None,
    mapping: MappingRules | None = None, **options,
) -> pd.DataFrame:
    """Per-tensor scores (see the module docstring); `options` go to `score_tensors` (device, chunk_size)."""
    return tensor_table(score_tensors(vector, target, origin, mapping, **options))


def layer_scores(
    vector: str | Path, target: str | Path | None = None, origin: str | Path | None = None,
    mapping: MappingRules | None = None, **options,
) -> pd.DataFrame:
    """Per-(layer, group) scores: columns layer, group, n_tensors, numel, tau_norm, theta_norm, ratio, med_norm,
    cos_tau_med, safelora_score, safelora_min. Without a target, theta_norm is ‖θ_base‖ from the manifest."""
    return layer_table(score_tensors(vector, target, origin, mapping, **options))
