"""Execute a graft plan as a streamed merge to disk.

Work is cut into row chunks of bounded size (so peak memory is a few chunks, whatever the model or shard size);
a reader thread prefetches the next chunks while the main thread computes and a writer thread appends results to
the output shard, whose header was written up front. Tensors that are not grafted are copied as raw byte ranges
in the kernel (`copy_file_range`) and never enter Python memory.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.checkpoint import DTYPES, Checkpoint, TensorInfo
from graft.devices import resolve_device
from graft.errors import UsageError
from graft.guard import OutputFolder
from graft.hub import pin, resolve_model
from graft.modelcard import model_card
from graft.ops import graft_rows, orthogonal_graft_rows, projection_coefficient, projection_terms
from graft.pipeline import prefetch
from graft.plan import GraftPlan, TensorAction, build_plan
from graft.recipe import Recipe
from graft.vector import SafetyVector
from graft.writer import (
    BackgroundWriter,
    OutputTensor,
    ShardWriter,
    parse_size,
    shard_names,
    split_into_shards,
    write_index,
)

RECIPE_FILE = "graft_recipe.yaml"
OUT_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


@dataclass(frozen=True)
class MergeResult:
    out: Path
    grafted: int
    copied: int
    bytes_written: int
    seconds: float
    device: str


def default_chunk_bytes(device: torch.device) -> int:
    """Small on CPU: buffers under glibc's mmap threshold (32 MiB) are reused instead of freshly faulted in, which
    halved merge time in bench/merge.py. Large on CUDA, where each chunk is a host-device transfer."""
    return 64 * 2**20 if device.type == "cuda" else 8 * 2**20


def open_plan(recipe: Recipe) -> GraftPlan:
    """Open the recipe's inputs (headers only) and build the plan; the caller closes plan.target etc."""
    if not recipe.target or not recipe.vector:
        raise UsageError("a merge needs a target and a vector (--target/--vector or the recipe's target/vector)")
    target = Checkpoint.open(resolve_model(recipe.target, role="target"), role="target")
    vector = SafetyVector.open(recipe.vector)
    origin = None
    if recipe.options.orthogonalize:
        origin = Checkpoint.open(resolve_model(recipe.options.origin or "", role="origin"), role="origin")
    return build_plan(target, vector, recipe, origin)


def close_plan(plan: GraftPlan) -> None:
    plan.target.close()
    plan.vector.close()
    if plan.origin is not None:
        plan.origin.close()


def merge(
    recipe: Recipe, *, force: bool = False, progress: Callable[[int], None] | None = None,
    on_plan: Callable[[GraftPlan, int], None] | None = None,
) -> MergeResult:
    """Graft `recipe.vector` into `recipe.target`, writing a complete HF folder at `recipe.out` (atomically)."""
    if not recipe.out:
        raise UsageError("no output folder: pass --out or set `out` in the recipe")
    started = time.perf_counter()
    # The recipe stored in the output (and its model card) names every input so it rebuilds from any folder.
    recipe = recipe.model_copy(update={
        "target": pin(recipe.target), "vector": pin(recipe.vector),
        "options": recipe.options.model_copy(update={"origin": pin(recipe.options.origin)})})
    plan = open_plan(recipe)
    try:
        plan.check()
        device = resolve_device(recipe.options.device)
        layout = output_layout(plan)
        total = sum(t.nbytes for shard in layout.values() for t in shard.tensors)
        inputs = [plan.target.root, plan.vector.root] + ([plan.origin.root] if plan.origin else [])
        folder = OutputFolder(Path(recipe.out), inputs=inputs, force=force, kind="merge")
        side_files = plan.target.non_weight_files()
        folder.check_free_space(total + sum((plan.target.root / rel).stat().st_size for rel in side_files))
        if on_plan:
            on_plan(plan, total)
        with folder as staging:
            chunk = recipe.options.chunk_size
            chunk_bytes = parse_size(chunk) if chunk else default_chunk_bytes(device)
            _write_shards(plan, layout, staging, device, chunk_bytes, progress)
            _write_folder_files(plan, layout, staging, recipe, side_files)
        return MergeResult(folder.destination, len(plan.grafted), len(plan.copied), total,
                           time.perf_counter() - started, str(device))
    finally:
        close_plan(plan)


@dataclass(frozen=True)
class ShardLayout:
    tensors: list[OutputTensor]
    metadata: dict[str, str]


def output_layout(plan: GraftPlan) -> dict[str, ShardLayout]:
    """Output file name -> its tensors in order. Mirrors the target's shards unless a shard size is asked for."""
    options = plan.recipe.options
    out_tag = OUT_DTYPES.get(options.dtype)

    def out_tensor(info: TensorInfo) -> OutputTensor:
        dtype = out_tag if out_tag and info.is_float else info.dtype
        return OutputTensor(info.name, dtype, info.shape)

    if options.shard_size is None:
        return {shard.file.name: ShardLayout([out_tensor(i) for i in shard.tensors], shard.metadata)
                for shard in plan.target.shards}
    tensors = [out_tensor(i) for shard in plan.target.shards for i in shard.tensors]
    groups = split_into_shards(tensors, parse_size(options.shard_size))
    return {name: ShardLayout(group, {"format": "pt"})
            for name, group in zip(shard_names("model", len(groups)), groups, strict=True)}


# -- streaming ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Copy:
    file: Path
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _GraftChunk:
    theta: torch.Tensor
    tau: torch.Tensor | None  # None: only cast theta to out_dtype
    origin: torch.Tensor | None
    lam: float
    coeff: float
    out_dtype: torch.dtype
    nbytes_in: int


def _write_shards(
    plan: GraftPlan, layout: dict[str, ShardLayout], staging: Path, device: torch.device, chunk_bytes: int,
    progress: Callable[[int], None] | None,
) -> None:
    actions = {a.target: a for a in plan.actions}
    pin = device.type == "cuda"
    writer = BackgroundWriter()
    try:
        for file, shard in layout.items():
            out = ShardWriter(staging / file, shard.tensors, shard.metadata)
            pieces = (p for t in shard.tensors for p in _pieces(plan, actions[t.name], t, chunk_bytes, pin))
            for piece in prefetch(pieces, depth=2):
                if isinstance(piece, _Copy):
                    writer.submit(out.copy_from, plan.target.fd(piece.file), piece.offset, piece.nbytes)
                    nbytes = piece.nbytes
                else:
                    writer.submit(out.write, _compute_chunk(piece, device))
                    nbytes = piece.nbytes_in
                if progress:
                    progress(nbytes)
            writer.submit(out.close)
        writer.close()
    except BaseException:
        writer.abort()
        raise


def _pieces(
    plan: GraftPlan, action: TensorAction, out: OutputTensor, chunk_bytes: int, pin: bool
) -> Iterator[_Copy | _GraftChunk]:
    """The reads that produce one output tensor, in order: byte copies and chunks to compute."""
    target = plan.target
    info = target.tensors[action.target]
    out_dtype = DTYPES[out.dtype][0]
    same_dtype = out.dtype == info.dtype
    grafted_rows = (action.rows if action.rows is not None else info.rows) if action.graft else 0
    step = max(1, chunk_bytes // max(1, info.row_nbytes))
    coeff = _orthogonal_coefficient(plan, action, grafted_rows, step) if action.origin else 0.0
    for start in range(0, grafted_rows, step):
        stop = min(grafted_rows, start + step)
        theta = target.read_rows(info.name, start, stop, pin=pin)
        tau = plan.vector.checkpoint.read_rows(action.donor or "", start, stop, pin=pin)
        origin = plan.origin.read_rows(action.origin, start, stop, pin=pin) if plan.origin and action.origin else None
        yield _GraftChunk(theta, tau, origin, action.lam, coeff, out_dtype, (stop - start) * info.row_nbytes)
    if grafted_rows < info.rows:
        start = grafted_rows
        if same_dtype:
            offset = info.offset + start * info.row_nbytes
            yield _Copy(info.file, offset, info.nbytes - start * info.row_nbytes)
        else:
            for begin in range(start, info.rows, step):
                stop = min(info.rows, begin + step)
                rows = target.read_rows(info.name, begin, stop, pin=pin)
                yield _GraftChunk(rows, None, None, 0.0, 0.0, out_dtype, (stop - begin) * info.row_nbytes)


def _orthogonal_coefficient(plan: GraftPlan, action: TensorAction, rows: int, step: int) -> float:
    """First pass over one tensor: c = ⟨τ,τ_med⟩/⟨τ_med,τ_med⟩ over the grafted rows (which the origin must have)."""
    assert plan.origin is not None and action.origin is not None and action.donor is not None
    dot = sq = 0.0
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        d, s = projection_terms(plan.target.read_rows(action.target, start, stop),
                                plan.vector.checkpoint.read_rows(action.donor, start, stop),
                                plan.origin.read_rows(action.origin, start, stop))
        dot += d
        sq += s
    return projection_coefficient(dot, sq)


def _compute_chunk(chunk: _GraftChunk, device: torch.device) -> torch.Tensor:
    theta = chunk.theta.to(device, non_blocking=True)
    if chunk.tau is None:
        return theta.to(chunk.out_dtype).cpu()
    tau = chunk.tau.to(device, non_blocking=True)
    if chunk.origin is None:
        result = graft_rows(theta, tau, chunk.lam, chunk.out_dtype)
    else:
        origin = chunk.origin.to(device, non_blocking=True)
        result = orthogonal_graft_rows(theta, tau, origin, chunk.lam, chunk.coeff, chunk.out_dtype)
    return result.cpu()


# -- the rest of the folder -----------------------------------------------------------------------------------------
def _write_folder_files(
    plan: GraftPlan, layout: dict[str, ShardLayout], staging: Path, recipe: Recipe, side_files: list[Path]
) -> None:
    target = plan.target
    mirrored = recipe.options.shard_size is None
    if len(layout) > 1 or (mirrored and target.index_file is not None):
        index_name = target.index_file.name if (mirrored and target.index_file) else "model.safetensors.index.json"
        metadata = dict(target.index_metadata) if mirrored else {}
        metadata["total_size"] = sum(t.nbytes for shard in layout.values() for t in shard.tensors)
        weight_map = {t.name: file for file, shard in layout.items() for t in shard.tensors}
        write_index(staging, index_name, weight_map, metadata)
    for rel in side_files:
        dest = staging / ("README.original.md" if rel == Path("README.md") else rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target.root / rel, dest)
    if recipe.options.dtype != "auto":
        _set_config_dtype(staging / "config.json", recipe.options.dtype)
    # The copy inside the output omits `out`: the folder's bytes must not depend on where it was written.
    (staging / RECIPE_FILE).write_text(recipe.model_copy(update={"out": None}).to_yaml())
    (staging / "README.md").write_text(model_card(plan))


def _set_config_dtype(config_path: Path, dtype: str) -> None:
    """Keep config.json's dtype fields truthful when the output dtype differs from the target's."""
    if not config_path.exists():
        return
    config = json.loads(config_path.read_text())

    def update(node: dict[str, object]) -> None:
        for key in ("dtype", "torch_dtype"):
            if key in node:
                node[key] = dtype
        for value in node.values():
            if isinstance(value, dict):
                update(value)

    update(config)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


__all__ = ["RECIPE_FILE", "MergeResult", "merge", "open_plan", "output_layout"]
