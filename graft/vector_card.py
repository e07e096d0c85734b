"""The card (README.md) a vector folder carries: what τ is, which models it came from, what it holds and how to
graft it. A vector is shared on the Hub like a model, and a repository page with no card says nothing about the
two checkpoints its differences come from or that it is not a model on its own.

Deterministic text (no timestamps, no output path), so the same sources give a byte-identical folder.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from graft.io.hub import looks_like_hub_id, split_revision

if TYPE_CHECKING:
    from graft.vector import SourceInfo, VectorManifest

CARD = "README.md"
VECTOR_TAGS = ["graft", "task-vector"]


def shown_input(spec: str) -> str:
    """An input as a card names it: a hub id as it is (with its commit), a local folder by its name alone, never a
    path (a card is published, and a path says where a user keeps their files)."""
    if looks_like_hub_id(split_revision(spec)[0]) and not Path(spec).expanduser().exists():
        return f"`{spec}`"
    return f"`{Path(spec).name}` (local folder)"


def source_lines(role: str, source: SourceInfo) -> list[str]:
    """A source model as the cards list it: hub id and commit (or local folder name), model type, weight-file
    hashes."""
    name = (f"`{source.hub}" + (f"@{source.revision}`" if source.revision else "`")) if source.hub else \
        f"`{Path(source.path).name}` (local folder)"
    lines = [f"  - {role}: {name}" + (f" ({source.model_type})" if source.model_type else "")]
    for file, digest in sorted((source.sha256 or {}).items()):
        lines.append(f"    - `{file}` sha256 `{digest}`")
    return lines


def vector_card_metadata(manifest: VectorManifest) -> dict[str, Any]:
    """The YAML header in the fields the Hub reads: the source models (hub ids only, never a path) and tags."""
    sources = [s.hub for s in (manifest.aligned, manifest.base) if s.hub and looks_like_hub_id(s.hub)]
    meta: dict[str, Any] = {}
    if sources:
        meta["base_model"] = sources
    meta["tags"] = [*VECTOR_TAGS, manifest.kind]
    return meta


def vector_card(manifest: VectorManifest) -> str:
    aligned, base = (_short(s) for s in (manifest.aligned, manifest.base))
    stored_as = sorted({t.dtype for t in manifest.tensors.values()})
    storage = ", ".join(stored_as) + (" (each tensor in its source dtype)" if manifest.dtype == "auto" else "")
    total = _norm(manifest.total_norm)
    lines = [
        "---",
        yaml.safe_dump(vector_card_metadata(manifest), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {manifest.kind.capitalize()} vector: {aligned} − {base} (graft {manifest.graft_version})",
        "",
        f"A task vector τ = θ_aligned − θ_base made by `graft extract`: the weight differences that {manifest.kind} "
        "tuning made to the base model. It is not a model on its own. `graft merge` grafts it layer-wise into a "
        "model fine-tuned from the same family, θ' = θ + λ(layer, group) · τ, to bring that behaviour back.",
        "",
        "## Sources",
        "",
        *(line[2:] for line in source_lines("aligned", manifest.aligned)),
        *(line[2:] for line in source_lines("base", manifest.base)),
        "",
        "## Contents",
        "",
        f"- {len(manifest.tensors)} tensors over {manifest.num_layers} layers, stored as {storage}",
        f"- ‖τ‖ over all tensors: {total}",
        f"- elements the storage dtype rounded: {manifest.inexact_elements} of {manifest.total_elements}",
        "",
        "| group | tensors | ‖τ‖ | mean ‖τ‖ / ‖θ_base‖ |",
        "|---|---|---|---|",
        *_group_rows(manifest),
        "",
        "`vector.json` describes every tensor (shape, layer, group, ‖τ‖, ‖τ‖/‖θ_base‖) and the sources' file hashes.",
        "",
        "## Use",
        "",
        "```bash",
        "graft plan  --target MEDICAL_MODEL --vector THIS_VECTOR --scale 1.0               # headers only",
        "graft merge --target MEDICAL_MODEL --vector THIS_VECTOR --scale 1.0 --out merged",
        "```",
        "",
        "THIS_VECTOR is this folder or its hub id (org/name[@REVISION]). `graft search` picks λ per layer and module "
        "group against safety and task benchmarks.",
        "",
    ]
    return "\n".join(lines)


def _short(source: SourceInfo) -> str:
    return source.hub.split("/")[-1] if source.hub else Path(source.path).name


def _group_rows(manifest: VectorManifest) -> list[str]:
    norms: dict[str, list[float | None]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)
    for tensor in manifest.tensors.values():
        norms[tensor.group].append(tensor.norm)
        if tensor.rel_norm is not None:
            ratios[tensor.group].append(tensor.rel_norm)
    rows = []
    for group in sorted(norms):
        finite = [v for v in norms[group] if v is not None]
        norm = _norm(sum(v * v for v in finite) ** 0.5 if len(finite) == len(norms[group]) else None)
        mean = f"{sum(ratios[group]) / len(ratios[group]):.4g}" if ratios[group] else "—"
        rows.append(f"| {group} | {len(norms[group])} | {norm} | {mean} |")
    return rows


def _norm(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "not finite (extracted with --allow-nonfinite)"


__all__ = ["CARD", "shown_input", "source_lines", "vector_card", "vector_card_metadata"]
