"""`graft extract`: the safety task vector τ = θ_aligned − θ_base, streamed tensor by tensor into a new vector
folder (graft.core.vector's format), with its manifest and card.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from graft import __version__
from graft.core.arithmetic import all_finite
from graft.core.dtypes import TAGS
from graft.core.mapping import find_backbone_prefix, layer_index, module_group
from graft.core.recipe import size_in_range
from graft.core.vector import MANIFEST, STORAGE_DTYPES, SourceInfo, VectorManifest, VectorTensor
from graft.engines.shards import Piece, ShardLayout, layout_in_shards, stream_shards, total_bytes, weight_map
from graft.engines.vector_card import CARD, vector_card
from graft.errors import IncompatibleError, InputError, UsageError
from graft.io.checkpoint import Checkpoint, TensorInfo, sha256_file
from graft.io.dtype_policy import NumericReads, quantization_config_problem
from graft.io.guard import OutputFolder
from graft.io.writer import OutputTensor, write_index
from graft.schema import require_utf8_path

# Config keys that decide tensor shapes and structure; anything else (ids, dtype, generation knobs) may differ.
_STRUCTURAL_KEY = re.compile(r"^(model_type|vocab_size|tie_word_embeddings|head_dim|num_\w+|\w+_size|\w+_dim)$")


def structural_config(config: dict[str, object], prefix: str = "") -> dict[str, object]:
    """The config entries that fix the architecture, flattened ('text_config.hidden_size': 3584)."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(structural_config(value, f"{prefix}{key}."))
        elif _STRUCTURAL_KEY.match(key):
            out[prefix + key] = value
    return out


def check_same_architecture(base: Checkpoint, aligned: Checkpoint, *, shared_only: bool) -> list[str]:
    """Names both hold; raise with the exact differences when the two are not the same architecture."""
    a, b = structural_config(base.config), structural_config(aligned.config)
    diffs = [f"config {k}: base {a.get(k)!r} vs aligned {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
             if a.get(k) != b.get(k)]
    if diffs:
        raise IncompatibleError(f"{base.root} and {aligned.root} are not the same architecture: {'; '.join(diffs[:5])}")
    shapes = [f"{n}: base {list(base.tensors[n].shape)} vs aligned {list(aligned.tensors[n].shape)}"
              for n in base.tensors if n in aligned.tensors and base.tensors[n].shape != aligned.tensors[n].shape]
    if shapes:
        more = f" (+{len(shapes) - 3} more)" if len(shapes) > 3 else ""
        raise IncompatibleError(f"shape mismatch between base and aligned: {'; '.join(shapes[:3])}{more}")
    only_base = [n for n in base.tensors if n not in aligned.tensors]
    only_aligned = [n for n in aligned.tensors if n not in base.tensors]
    if (only_base or only_aligned) and not shared_only:
        sample = (only_base + only_aligned)[:3]
        raise IncompatibleError(
            f"{len(only_base)} tensors only in base and {len(only_aligned)} only in aligned (e.g. {', '.join(sample)});"
            " pass --shared-only to extract over the names both hold"
        )
    return [n for n in base.tensors if n in aligned.tensors]


def tensors_to_extract(base: Checkpoint, aligned: Checkpoint, shared: list[str]) -> tuple[list[str], list[str]]:
    """(τ's tensors, shared tensors skipped) under the dtype policy (graft.io.dtype_policy): a tensor that is a float
    on either side is differenced, so both sides must be F32, F16 or BF16 and not quantized (an int8 or fp8 side is
    refused by name, never turned into a τ of garbage); one that is an integer on both sides (position ids, masks)
    is skipped, unless it is a quantized weight. Weights declared quantized in config.json are refused outright."""
    reads = [NumericReads(base, "base"), NumericReads(aligned, "aligned")]
    for side in reads:
        declared = quantization_config_problem(side.checkpoint)
        if declared is not None:
            raise InputError(f"{declared}: the {side.role}'s stored numbers are not its weights, so τ = aligned − "
                             "base from them would be garbage; extract from the unquantized checkpoints")
    names, skipped = [], []
    doing = "differenced (τ = aligned − base)"
    for name in shared:
        if not base.tensors[name].is_float and not aligned.tensors[name].is_float:
            for side in reads:
                side.refuse_quantized(name, doing=doing)
            skipped.append(name)
            continue
        for side in reads:
            side.require(name, doing=doing, fix="extract from checkpoints stored in F32, F16 or BF16")
        names.append(name)
    return names, skipped


@dataclass(frozen=True)
class ExtractResult:
    out: Path
    manifest: VectorManifest
    skipped: list[str]  # shared non-float tensors (buffers, ids): no task vector for those


def extract_vector(
    base_path: str | Path,
    aligned_path: str | Path,
    out: str | Path,
    *,
    dtype: str = "auto",
    shard_size: str = "5GB",
    force: bool = False,
    shared_only: bool = False,
    hash_sources: bool = True,
    kind: str = "safety",
    chunk_size: str = "8MB",
    allow_nonfinite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ExtractResult:
    """Stream τ = aligned − base tensor by tensor (in flat element chunks) into a new vector folder.
    `progress(n)` is told each chunk's source bytes as it is written, `on_total(total)` the sum of them first (both
    sources' bytes of every extracted tensor), so that a bar has a total and an ETA.

    Every chunk of both sources is checked for NaN/Inf as it streams by (the check is cheap next to the read), so
    a vector is never written from non-finite weights unless `allow_nonfinite` says so.

    Example::

        import graft
        vector = graft.extract_vector("models/base", "models/aligned", "vectors/safety", dtype="float32").out
    """
    if dtype not in STORAGE_DTYPES:
        raise UsageError(f"--dtype {dtype!r}: choose one of {', '.join(STORAGE_DTYPES)}")
    shard_bytes, chunk_bytes = _size("--shard-size", shard_size), _size("--chunk-size", chunk_size)
    with Checkpoint.open(base_path, role="base") as base, Checkpoint.open(aligned_path, role="aligned") as aligned:
        for role, checkpoint in (("base", base), ("aligned", aligned)):
            require_utf8_path(checkpoint.root, role)  # named in vector.json: checked now, not after the work
        if os.path.samefile(base.root, aligned.root):
            raise UsageError(f"--base and --aligned are the same model ({base.root}): τ = aligned − base would be "
                             "zero everywhere; give the base model and its aligned (instruct) version")
        names, skipped = tensors_to_extract(base, aligned, check_same_architecture(base, aligned,
                                                                                   shared_only=shared_only))
        if not names:
            raise IncompatibleError(f"{base.root} and {aligned.root} share no floating-point tensors")
        storage = {n: STORAGE_DTYPES[dtype] or base.tensors[n].dtype for n in names}
        outputs = [OutputTensor(n, storage[n], base.tensors[n].shape) for n in names]
        folder = OutputFolder(Path(out), inputs=[base.root, aligned.root], force=force, kind="vector")
        folder.check_free_space(sum(t.nbytes for t in outputs))
        if on_total is not None:
            on_total(sum(2 * base.tensors[n].nbytes for n in names))  # what `progress` counts: both sources' bytes
        prefix = find_backbone_prefix({n: base.tensors[n].shape for n in names})
        hashes = ThreadPoolExecutor(max_workers=1) if hash_sources else None
        futures = {}
        if hashes:
            for role, ckpt in (("base", base), ("aligned", aligned)):
                futures[role] = {f.name: hashes.submit(sha256_file, f) for f in ckpt.weight_files}
        try:
            with folder as staging:
                stats = _write_difference(base, aligned, outputs, staging, shard_bytes, chunk_bytes, progress,
                                          allow_nonfinite)
                manifest = VectorManifest(
                    graft_version=__version__,
                    kind=kind,
                    base=_source(base, {k: f.result() for k, f in futures.get("base", {}).items()} or None),
                    aligned=_source(aligned, {k: f.result() for k, f in futures.get("aligned", {}).items()} or None),
                    dtype=dtype,
                    backbone_prefix=prefix,
                    num_layers=1 + max((layer_index(_rel(n, prefix)) or 0) for n in names),
                    tensors={n: _describe(n, storage[n], base.tensors[n], prefix, stats[n]) for n in names},
                    total_norm=_finite_or_none(math.sqrt(sum(s[0] ** 2 for s in stats.values()))),
                    inexact_elements=sum(s[2] for s in stats.values()),
                    total_elements=sum(base.tensors[n].numel for n in names),
                )
                if manifest.total_norm == 0.0:  # identical weights under two names: a vector that grafts nothing
                    raise IncompatibleError(f"τ = aligned − base is zero in every tensor: {base.root} and "
                                            f"{aligned.root} hold the same weights; check that --aligned is the "
                                            "aligned model (nothing was written)")
                (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
                (staging / CARD).write_text(vector_card(manifest))
                base.as_read.check("base")  # rewritten while τ was read from it: nothing is committed
                aligned.as_read.check("aligned")
        finally:
            if hashes:
                hashes.shutdown(wait=True, cancel_futures=True)
    return ExtractResult(folder.destination, manifest, skipped)


def _size(flag: str, text: str) -> int:
    try:
        return size_in_range(flag.removeprefix("--").replace("-", "_"), text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from exc


def _require_finite(values: torch.Tensor, info: TensorInfo) -> None:
    if not all_finite(values):
        raise InputError(f"{info.file}: tensor {info.name!r} holds NaN or infinite values; a task vector from it "
                         "would be garbage (repair or re-download the file, or pass --allow-nonfinite)")


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _rel(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def _describe(name: str, dtype: str, info: TensorInfo, prefix: str, stat: tuple[float, float, int]) -> VectorTensor:
    norm, base_norm, inexact = stat
    rel = _rel(name, prefix)
    finite = math.isfinite(norm) and math.isfinite(base_norm)
    return VectorTensor(shape=list(info.shape), dtype=dtype, layer=layer_index(rel), group=module_group(rel),
                        norm=norm if math.isfinite(norm) else None,
                        rel_norm=(norm / base_norm) if finite and base_norm > 0 else None, inexact=inexact)


def _source(ckpt: Checkpoint, hashes: dict[str, str] | None) -> SourceInfo:
    from graft.io.hub import hub_source

    config = ckpt.config
    origin = hub_source(ckpt.root)
    return SourceInfo(path=str(ckpt.root), model_type=config.get("model_type"),  # type: ignore[arg-type]
                      architectures=config.get("architectures"), sha256=hashes,  # type: ignore[arg-type]
                      hub=origin.repo_id if origin else None, revision=origin.revision if origin else None)


def _write_difference(
    base: Checkpoint,
    aligned: Checkpoint,
    outputs: list[OutputTensor],
    staging: Path,
    shard_bytes: int,
    chunk_bytes: int,
    progress: Callable[[int], None] | None,
    allow_nonfinite: bool = False,
) -> dict[str, tuple[float, float, int]]:
    """Write every τ tensor; return per tensor (‖τ‖ as stored, ‖θ_base‖, inexact element count)."""
    layout = layout_in_shards("vector", outputs, shard_bytes, {"format": "pt", "producer": "graft"})
    stats: dict[str, tuple[float, float, int]] = {}

    def pieces(shard: ShardLayout) -> Iterator[tuple[Piece, int]]:
        for tensor in shard.tensors:
            info = base.tensors[tensor.name]
            target_dtype = TAGS[tensor.dtype][0]
            sq_tau = sq_base = 0.0
            inexact = 0
            step = max(1, chunk_bytes // info.itemsize)  # flat element ranges: bounded whatever the shape
            for start in range(0, info.numel, step):
                stop = min(info.numel, start + step)
                b_raw = base.read_elements(tensor.name, start, stop)
                a_raw = aligned.read_elements(tensor.name, start, stop)
                b = b_raw.float()
                diff = a_raw.float().sub_(b)
                stored = diff.to(target_dtype)
                # One check, on τ as stored: NaN or inf in either source makes it non-finite too (inf − inf is NaN);
                # the sources are examined only then, to name the one at fault.
                if not allow_nonfinite and not all_finite(stored):
                    _require_finite(b_raw, info)
                    _require_finite(a_raw, aligned.tensors[tensor.name])
                    raise IncompatibleError(
                        f"tensor {tensor.name!r}: τ = aligned − base is not finite in {tensor.dtype} (it "
                        "overflows); store it wider with --dtype float32, or pass --allow-nonfinite"
                    )
                back = stored.float()
                inexact += int(torch.count_nonzero(back != diff))
                sq_tau += float(torch.linalg.vector_norm(back, dtype=torch.float64)) ** 2
                sq_base += float(torch.linalg.vector_norm(b, dtype=torch.float64)) ** 2
                yield stored, 2 * (stop - start) * info.itemsize
            stats[tensor.name] = (math.sqrt(sq_tau), math.sqrt(sq_base), inexact)

    stream_shards(staging, layout, pieces, progress)
    if len(layout) > 1:
        write_index(staging, "vector.safetensors.index.json", weight_map(layout), {"total_size": total_bytes(layout)})
    return stats


__all__ = ["ExtractResult", "check_same_architecture", "extract_vector", "structural_config"]
