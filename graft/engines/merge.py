"""Execute a graft plan as a streamed merge to disk.

Work is cut into flat element chunks of bounded size (peak memory is a few chunks, whatever the model or shape);
a reader thread prefetches the next chunks while the main thread computes and a writer thread appends results to
the output shard, whose header was written up front. Tensors that are not grafted are copied as raw byte ranges
in the kernel (`copy_file_range`) and never enter Python memory.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.core.arithmetic import all_finite, graft_rows
from graft.core.dtypes import CAST_NAMES, TAGS
from graft.core.operators import Chunk, Chunks, GraftOperator, TensorRef
from graft.core.recipe import Recipe
from graft.engines.model_card import load_card_results, model_card
from graft.engines.output_names import CARD_FILE, RECIPE_FILE, carried_names
from graft.engines.plan import GraftPlan, TensorAction, build_plan
from graft.engines.shards import Piece, ShardLayout, layout_in_shards, stream_shards, total_bytes, weight_map
from graft.errors import IncompatibleError, InputError, UsageError
from graft.io.checkpoint import Checkpoint, TensorInfo
from graft.io.devices import resolve_device
from graft.io.guard import OutputFolder
from graft.io.hub import pin, resolve_model
from graft.io.pipeline import prefetch
from graft.io.vector_folder import SafetyVector
from graft.io.writer import OutputTensor, ShardWriter, write_index
from graft.schema import parse_size, require_utf8_path

OUT_DTYPES = CAST_NAMES  # the output dtype a recipe names -> its safetensors tag
RESHARDED_INDEX = "model.safetensors.index.json"  # the index of an output re-sharded with --shard-size


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


def open_plan(recipe: Recipe | str | Path) -> GraftPlan:
    """Open the recipe's inputs (headers only) and build the plan. `recipe` is a `Recipe` or a recipe YAML file. The
    plan is a context manager that closes its inputs (or call `close_plan`).

    Example::

        import graft
        with graft.open_plan(graft.Recipe(target="med-model", vector="vectors/safety")) as plan:
            print(len(plan.grafted), plan.problems(), plan.warnings())
    """
    if isinstance(recipe, (str, Path)):
        recipe = Recipe.from_yaml(recipe)
    if not recipe.target or not recipe.vector:
        raise UsageError("a merge needs a target and a vector (--target/--vector or the recipe's target/vector)")
    target = Checkpoint.open(resolve_model(recipe.target, role="target"), role="target")
    vector = SafetyVector.open(recipe.vector)
    origin = None
    if recipe.operator_spec.uses_origin:
        origin = Checkpoint.open(resolve_model(recipe.options.origin or "", role="origin"), role="origin")
    return build_plan(target, vector, recipe, origin)


def check_warnings(plan: GraftPlan, on_warning: Callable[[str], None] | None) -> None:
    """Report each plan warning; under `options.strict` refuse instead (exit 4), so CI can gate on them."""
    notes = plan.warnings()
    if notes and plan.recipe.options.strict:
        more = f" (+{len(notes) - 1} more warnings)" if len(notes) > 1 else ""
        raise IncompatibleError(f"{notes[0]}{more} [--strict: warnings are errors]")
    for note in notes:
        if on_warning:
            on_warning(note)


def inputs_unchanged(plan: GraftPlan) -> None:
    """Refuse (InputError) when a file the plan read (weights, index, config, manifest, side files) was rewritten,
    replaced or removed since it was opened."""
    plan.target.as_read.check("target")
    plan.vector.checkpoint.as_read.check("vector")
    if plan.origin is not None:
        plan.origin.as_read.check("origin")


def close_plan(plan: GraftPlan) -> None:
    """Close what `open_plan` opened (the same as leaving its `with` block)."""
    plan.close()


def merge(
    recipe: Recipe, *, force: bool = False, progress: Callable[[int], None] | None = None,
    on_plan: Callable[[GraftPlan, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None, results: str | Path | None = None,
) -> MergeResult:
    """Graft `recipe.vector` into `recipe.target`, writing a complete HF folder at `recipe.out` (atomically).

    Every plan warning goes to `on_warning` (the CLI prints it); with `options.strict` a warning is an error.
    `results` (a `graft eval` results.json) puts its scores in the model card, as the Hub's model-index.

    Example::

        import graft
        graft.run_merge(graft.Recipe(target="med-model", vector="vector", out="merged", coefficients={"scale": 0.8}))
    """
    if not recipe.out:
        raise UsageError("no output folder: pass --out or set `out` in the recipe")
    card_results = load_card_results(results) if results is not None else None
    started = time.perf_counter()
    # The recipe stored in the output (and its model card) names every input so it rebuilds from any folder.
    recipe = recipe.model_copy(update={
        "target": pin(recipe.target), "vector": pin(recipe.vector),
        "options": recipe.options.model_copy(update={"origin": pin(recipe.options.origin)})})
    plan = open_plan(recipe)
    try:
        for role, checkpoint in (("target", plan.target), ("vector", plan.vector), ("origin", plan.origin)):
            if checkpoint is not None:  # named in graft_recipe.yaml: checked now, not once the work is done
                require_utf8_path(checkpoint.root, role)
        # A hub input is stored at the commit it resolved to: the recipe rebuilds the same bytes after the repo moves.
        plan.recipe = recipe = recipe.model_copy(update={
            "target": pin(recipe.target, plan.target.root), "vector": pin(recipe.vector, plan.vector.root),
            "options": recipe.options.model_copy(update={
                "origin": pin(recipe.options.origin, plan.origin.root if plan.origin else None)})})
        plan.check()
        check_warnings(plan, on_warning)
        device = resolve_device(recipe.options.device)
        layout, carried = planned_output(plan)
        plan.target.as_read.add(plan.target.root / rel for rel in carried)  # copied at the end: as they are now
        total = total_bytes(layout)
        inputs = [plan.target.root, plan.vector.root] + ([plan.origin.root] if plan.origin else [])
        inputs += [Path(results)] if results is not None else []
        folder = OutputFolder(Path(recipe.out), inputs=inputs, force=force, kind="merge")
        folder.check_free_space(total + sum((plan.target.root / rel).stat().st_size for rel in carried))
        if on_plan:
            on_plan(plan, total)
        with folder as staging:
            chunk = recipe.options.chunk_size
            chunk_bytes = parse_size(chunk) if chunk else default_chunk_bytes(device)
            _write_shards(plan, layout, staging, device, chunk_bytes, progress)
            inputs_unchanged(plan)  # the shards came from the files the plan read...
            if card_results is not None:  # scores of other weights are never published as this model's
                with Checkpoint.open(staging, role="merged") as written:
                    card_results.check_weights(written.weights_sha256(), folder.destination)
            _write_folder_files(plan, layout, staging, recipe, carried,
                                card_results.scores if card_results is not None else None)
            inputs_unchanged(plan)  # ...and so did the rest: an input rewritten meanwhile discards the output
        return MergeResult(folder.destination, len(plan.grafted), len(plan.copied), total,
                           time.perf_counter() - started, str(device))
    finally:
        close_plan(plan)


def planned_output(plan: GraftPlan) -> tuple[dict[str, ShardLayout], dict[Path, Path]]:
    """The output's shards, and each non-weight file of the target with the name it gets there: every name the
    output will hold claimed once (graft.engines.output_names), so a collision is an input error before any work.
    `graft plan` calls it too, so a plan that passes is a merge whose names fit."""
    layout = output_layout(plan)
    target = plan.target
    mirrored = plan.recipe.options.shard_size is None
    if mirrored:
        by = f"named by {target.index_file}" if target.index_file else f"in {target.root}"
        weights = {file: f"the weight shard {file!r} {by}" for file in layout}
        if target.index_file is not None:
            weights[target.index_file.name] = f"the index {target.index_file}"
    else:
        weights = {file: f"the output shard {file!r} (--shard-size)" for file in layout}
        if len(layout) > 1:
            weights[RESHARDED_INDEX] = f"the index graft writes ({RESHARDED_INDEX})"
    return layout, carried_names(target.root, target.non_weight_files(), weights)


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
    return layout_in_shards("model", tensors, parse_size(options.shard_size), {"format": "pt"})


# -- streaming ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Copy:
    file: Path
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _GraftChunk:
    theta: torch.Tensor  # a flat range of the target tensor's elements
    tau: torch.Tensor | None  # the same range of τ; None: only cast theta to out_dtype
    origin: torch.Tensor | None
    lam: float
    start: int  # the range's first flat index
    operator: GraftOperator | None
    tensor: TensorRef | None
    state: object  # the operator's pre-pass result for this tensor
    out_dtype: torch.dtype
    nbytes_in: int
    target: TensorInfo
    donor: TensorInfo | None  # where τ comes from (named when it holds non-finite values)
    origin_info: TensorInfo | None = None  # where θ_origin comes from


def _write_shards(
    plan: GraftPlan, layout: dict[str, ShardLayout], staging: Path, device: torch.device, chunk_bytes: int,
    progress: Callable[[int], None] | None,
) -> None:
    actions = {a.target: a for a in plan.actions}
    pin = device.type == "cuda"

    def pieces(shard: ShardLayout) -> Iterator[tuple[Piece, int]]:
        reads = (p for t in shard.tensors for p in _pieces(plan, actions[t.name], t, chunk_bytes, pin))
        for piece in prefetch(reads, depth=2):
            if isinstance(piece, _Copy):
                yield functools.partial(_copy_piece, target=plan.target, piece=piece), piece.nbytes
            else:
                yield _compute_chunk(piece, device), piece.nbytes_in

    stream_shards(staging, layout, pieces, progress)


def _copy_piece(out: ShardWriter, target: Checkpoint, piece: _Copy) -> None:
    """In the writer thread: a byte range of the target straight into the output, its descriptor held meanwhile."""
    with target.handle(piece.file) as fd:
        out.copy_from(fd, piece.offset, piece.nbytes)


def chunk_elements(chunk_bytes: int, info: TensorInfo) -> int:
    """Elements per chunk: `--chunk-size` bounds the bytes of a chunk of the stored tensor, whatever its shape."""
    return max(1, chunk_bytes // info.itemsize)


def grafted_elements(action: TensorAction, info: TensorInfo) -> int:
    """The flat prefix of the target tensor that is grafted: all of it, or the donor's rows of a grown vocabulary
    (rows × the elements of one row, since only the first dimension grew)."""
    if not action.graft:
        return 0
    return info.numel if action.rows is None else action.rows * math.prod(info.row_shape)


def _pieces(
    plan: GraftPlan, action: TensorAction, out: OutputTensor, chunk_bytes: int, pin: bool
) -> Iterator[_Copy | _GraftChunk]:
    """The reads that produce one output tensor, in order: byte copies and flat element ranges to compute."""
    target = plan.target
    info = target.tensors[action.target]
    out_dtype = TAGS[out.dtype][0]
    same_dtype = out.dtype == info.dtype
    grafted = grafted_elements(action, info)
    step = chunk_elements(chunk_bytes, info)
    donor = plan.vector.checkpoint.tensors[action.donor] if action.graft and action.donor else None
    origin_info = plan.origin.tensors[action.origin] if plan.origin and action.origin else None
    operator = plan.operator
    tensor = TensorRef(action.donor or "", action.target, grafted)
    state = operator.prepare(tensor, tensor_chunks(plan, action, grafted, step)) if grafted else None
    for start in range(0, grafted, step):
        stop = min(grafted, start + step)
        theta = target.read_elements(info.name, start, stop, pin=pin)
        tau = plan.vector.checkpoint.read_elements(action.donor or "", start, stop, pin=pin)
        origin = (plan.origin.read_elements(action.origin, start, stop, pin=pin)
                  if plan.origin and action.origin else None)
        yield _GraftChunk(theta, tau, origin, action.lam, start, operator, tensor, state, out_dtype,
                          (stop - start) * info.itemsize, info, donor, origin_info)
    if grafted < info.numel:
        if same_dtype:
            yield _Copy(info.file, info.offset + grafted * info.itemsize, info.nbytes - grafted * info.itemsize)
        else:
            for begin in range(grafted, info.numel, step):
                stop = min(info.numel, begin + step)
                theta = target.read_elements(info.name, begin, stop, pin=pin)
                yield _GraftChunk(theta, None, None, 0.0, begin, None, None, None, out_dtype,
                                  (stop - begin) * info.itemsize, info, None)


def tensor_chunks(plan: GraftPlan, action: TensorAction, elements: int, step: int) -> Chunks:
    """The grafted elements of one tensor as the operator's pre-pass reads them: flat ranges of `step` elements
    from disk, τ always, θ and θ_origin when the operator uses the origin. The resident graft reads its pre-pass
    through this same function with merge's step, so an order-dependent sum (orthogonal's, in fp64) is the same."""
    assert action.donor is not None
    sides = plan.origin is not None and action.origin is not None

    def chunks() -> Iterator[Chunk]:
        for start in range(0, elements, step):
            stop = min(elements, start + step)
            tau = plan.vector.checkpoint.read_elements(action.donor or "", start, stop)
            if not sides:
                yield Chunk(start, tau)
                continue
            assert plan.origin is not None and action.origin is not None
            yield Chunk(start, tau, plan.target.read_elements(action.target, start, stop),
                        plan.origin.read_elements(action.origin, start, stop))

    return chunks


def _compute_chunk(chunk: _GraftChunk, device: torch.device) -> torch.Tensor:
    """One chunk of the output. Finiteness is checked once, on the result: a NaN or inf in θ or τ makes θ + λ·f(τ)
    non-finite (λ ≠ 0 for every grafted tensor; 0·inf would be NaN anyway), and only then are the inputs examined to
    name the one at fault. An operator that may drop entries (dare, trim) has its inputs checked before it runs."""
    theta = chunk.theta.to(device, non_blocking=True)
    if chunk.tau is None:
        result = theta.to(chunk.out_dtype)
        if not all_finite(result) and all_finite(theta):
            raise IncompatibleError(
                f"{chunk.target.file}: tensor {chunk.target.name!r} overflows {_dtype_name(chunk.out_dtype)} "
                "when cast; choose a wider --dtype (or auto)"
            )
        return result.cpu()
    tau = chunk.tau.to(device, non_blocking=True)
    origin = chunk.origin.to(device, non_blocking=True) if chunk.origin is not None else None
    assert chunk.operator is not None and chunk.tensor is not None
    if not chunk.operator.keeps_every_entry:  # θ always reaches the result; τ and θ_origin may not
        _name_nonfinite_input(chunk, None, tau, origin)
    effective = chunk.operator.transform(Chunk(chunk.start, tau, theta if origin is not None else None, origin),
                                         chunk.tensor, chunk.state)
    result = graft_rows(theta, effective, chunk.lam, chunk.out_dtype)
    if not all_finite(result):
        _name_nonfinite_input(chunk, theta, tau, origin)
        name = chunk.operator.name
        if not all_finite(effective):  # the operator's f(τ) itself (a plugin's bug, or 1/density)
            raise IncompatibleError(f"tensor {chunk.target.name!r}: operator {name} made f(τ) non-finite from finite "
                                    "inputs; check its parameters (or the operator's code). Nothing was written")
        what = "θ + λ·τ" if name == "linear" else f"θ + λ·f(τ) (operator {name})"
        raise IncompatibleError(
            f"tensor {chunk.target.name!r}: {what} with λ = {chunk.lam:g} is not finite in "
            f"{_dtype_name(chunk.out_dtype)} (it overflows); lower λ or choose a wider --dtype. Nothing was written"
        )
    return result.cpu()


def _name_nonfinite_input(chunk: _GraftChunk, theta: torch.Tensor | None, tau: torch.Tensor,
                          origin: torch.Tensor | None) -> None:
    """NaN/Inf in an input would silently poison the graft: refuse, naming the file and the tensor."""
    sides = [(theta, chunk.target, "target"), (tau, chunk.donor or chunk.target, "vector"),
             (origin, chunk.origin_info, "origin")]
    for values, info, role in sides:
        if values is not None and info is not None and not all_finite(values):
            raise InputError(f"{info.file}: {role} tensor {info.name!r} holds NaN or infinite values; graft refuses "
                             "to propagate them (repair or re-download the file)")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- the rest of the folder -----------------------------------------------------------------------------------------
def _write_folder_files(
    plan: GraftPlan, layout: dict[str, ShardLayout], staging: Path, recipe: Recipe, carried: dict[Path, Path],
    scores: dict[str, dict[str, object]] | None = None,
) -> None:
    target = plan.target
    mirrored = recipe.options.shard_size is None
    if len(layout) > 1 or (mirrored and target.index_file is not None):
        index_name = target.index_file.name if (mirrored and target.index_file) else RESHARDED_INDEX
        metadata = dict(target.index_metadata) if mirrored else {}
        metadata["total_size"] = total_bytes(layout)
        write_index(staging, index_name, weight_map(layout), metadata)
    for rel, name in carried.items():
        dest = staging / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target.root / rel, dest)
    if recipe.options.dtype != "auto":
        _set_config_dtype(staging / "config.json", recipe.options.dtype)
    # The copy inside the output omits `out`: the folder's bytes must not depend on where it was written.
    (staging / RECIPE_FILE).write_text(recipe.model_copy(update={"out": None}).to_yaml())
    (staging / CARD_FILE).write_text(model_card(plan, scores))


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


__all__ = [
    "RECIPE_FILE",
    "MergeResult",
    "check_warnings",
    "chunk_elements",
    "grafted_elements",
    "merge",
    "open_plan",
    "output_layout",
    "planned_output",
    "tensor_chunks",
]
