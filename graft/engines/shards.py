"""Writing an output's safetensors shards as a stream, for `graft extract` (τ) and `graft merge` (θ') alike.

Names, dtypes and shapes are known before any weight is read, so each shard's header is written first and its
tensors are appended in order by a writer thread (`BackgroundWriter`) while the caller computes the next piece;
no shard is ever assembled in memory. On any failure every shard opened so far is discarded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.io.pipeline import BackgroundWriter
from graft.io.writer import OutputTensor, ShardWriter, shard_names, split_into_shards

# A piece of a shard: bytes to append (a tensor), or a job run on the open shard in the writer thread (a raw copy).
Piece = torch.Tensor | Callable[[ShardWriter], None]


@dataclass(frozen=True)
class ShardLayout:
    """One output file: its tensors in order and its header's metadata."""

    tensors: list[OutputTensor]
    metadata: dict[str, str]


def layout_in_shards(stem: str, tensors: Sequence[OutputTensor], max_bytes: int,
                     metadata: Mapping[str, str]) -> dict[str, ShardLayout]:
    """`tensors`, in order, cut into files of at most `max_bytes` named `STEM.safetensors` or
    `STEM-0000i-of-0000N.safetensors`."""
    groups = split_into_shards(tensors, max_bytes)
    return {name: ShardLayout(group, dict(metadata))
            for name, group in zip(shard_names(stem, len(groups)), groups, strict=True)}


def weight_map(layout: Mapping[str, ShardLayout]) -> dict[str, str]:
    """Tensor name -> the file that holds it: what an index records."""
    return {t.name: file for file, shard in layout.items() for t in shard.tensors}


def total_bytes(layout: Mapping[str, ShardLayout]) -> int:
    return sum(t.nbytes for shard in layout.values() for t in shard.tensors)


def stream_shards(staging: Path, layout: Mapping[str, ShardLayout],
                  pieces: Callable[[ShardLayout], Iterable[tuple[Piece, int]]],
                  progress: Callable[[int], None] | None = None) -> None:
    """Write every file of `layout` into `staging`: `pieces(shard)` yields, in the shard's tensor order, what to
    append and how many input bytes it stands for (what `progress` is told)."""
    writer = BackgroundWriter()
    opened: list[ShardWriter] = []
    try:
        for file, shard in layout.items():
            out = ShardWriter(staging / file, shard.tensors, shard.metadata)
            opened.append(out)
            for piece, nbytes in pieces(shard):
                if isinstance(piece, torch.Tensor):
                    writer.submit(out.write, piece)
                else:
                    writer.submit(piece, out)
                if progress:
                    progress(nbytes)
            writer.submit(out.close)
        writer.close()
    except BaseException:
        writer.abort()
        for out in opened:
            out.discard()
        raise


__all__ = ["Piece", "ShardLayout", "layout_in_shards", "stream_shards", "total_bytes", "weight_map"]
