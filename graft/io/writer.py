"""Write safetensors folders the way graft needs: streamed, atomic, never over something a user owns.

Every output shard's header is computed before its data, since names, dtypes and shapes are known from the plan;
tensors are then appended in order, so a shard never has to be held in memory. Writes happen in a background
thread so disk writes overlap reading and computing. The whole folder is built beside its destination and renamed
into place only when complete (`graft.io.guard.OutputFolder`).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from graft.core.dtypes import TAGS
from graft.errors import OutputError
from graft.io.guard import count_written


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: str  # safetensors tag
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = TAGS[self.dtype][1]
        for d in self.shape:
            n *= d
        return n


def encode_header(tensors: Sequence[OutputTensor], metadata: dict[str, str] | None) -> bytes:
    """Header bytes (length prefix + JSON padded to 8 bytes), laid out in the given order like safetensors does."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


def _raise_write_error(exc: OSError, path: Path) -> None:
    if exc.errno == errno.ENOSPC:
        raise OutputError(f"{path}: disk full while writing; free space or choose another --out") from exc
    raise OutputError(f"{path}: write failed ({exc.strerror})") from exc


class ShardWriter:
    """Writes one safetensors file: the header at once, then each tensor's bytes in header order."""

    def __init__(self, path: Path, tensors: Sequence[OutputTensor], metadata: dict[str, str] | None) -> None:
        self.path = path
        self.tensors = list(tensors)
        self._next = 0
        self._pending = self.tensors[0].nbytes if self.tensors else 0
        self._fd = -1
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._write_all(encode_header(self.tensors, metadata))
        except OSError as exc:
            self.discard()
            _raise_write_error(exc, path)

    def write(self, data: torch.Tensor | bytes | memoryview) -> None:
        """Append bytes of the current tensor (a whole tensor, or the next rows of it)."""
        if isinstance(data, torch.Tensor):
            data = memoryview(data.contiguous().reshape(-1).view(torch.uint8).numpy())
        view = data
        self._advance(len(view))
        try:
            self._write_all(view)
        except OSError as exc:
            _raise_write_error(exc, self.path)

    def copy_from(self, src_fd: int, offset: int, nbytes: int) -> None:
        """Append `nbytes` taken straight from another file: pass-through tensors never enter Python memory."""
        self._advance(nbytes)
        done = 0
        try:
            while done < nbytes:
                got = os.copy_file_range(src_fd, self._fd, min(nbytes - done, 1 << 20), offset + done)
                count_written(got)
                if got == 0:
                    raise OutputError(f"{self.path}: source ended early while copying; the input may be truncated")
                done += got
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                _raise_write_error(exc, self.path)
        try:  # across file systems (or where the kernel cannot): copy through a buffer
            self._copy_slow(src_fd, offset + done, nbytes - done)
        except OSError as exc:
            _raise_write_error(exc, self.path)

    def _copy_slow(self, src_fd: int, offset: int, nbytes: int) -> None:
        block = 16 * 1024 * 1024
        while nbytes:
            data = os.pread(src_fd, min(block, nbytes), offset)
            if not data:
                raise OutputError(f"{self.path}: source ended early while copying; the input may be truncated")
            self._write_all(data)
            offset += len(data)
            nbytes -= len(data)

    def _advance(self, nbytes: int) -> None:
        while self._pending == 0 and self._next < len(self.tensors) - 1:
            self._next += 1
            self._pending = self.tensors[self._next].nbytes
        if nbytes > self._pending:
            name = self.tensors[self._next].name if self.tensors else "?"
            raise RuntimeError(f"internal: {nbytes} bytes written for tensor {name!r}, {self._pending} expected")
        self._pending -= nbytes

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            count_written(written)

    def discard(self) -> None:
        """Close the file without checks (the output is being abandoned): no descriptor outlives a failure."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        complete = self._pending == 0 and self._next >= len(self.tensors) - 1
        os.close(self._fd)
        self._fd = -1
        if not complete:
            raise RuntimeError(f"internal: {self.path} closed before all tensors were written")


def write_index(folder: Path, index_name: str, weight_map: dict[str, str], metadata: dict[str, object]) -> None:
    """The `*.safetensors.index.json` that transformers reads: metadata (total_size...) and tensor -> shard."""
    body = {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))}
    (folder / index_name).write_text(json.dumps(body, indent=2) + "\n")


def shard_names(stem: str, count: int) -> list[str]:
    """HF shard file names: model-00001-of-00003.safetensors, or model.safetensors for a single file."""
    if count == 1:
        return [f"{stem}.safetensors"]
    return [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def split_into_shards(tensors: Sequence[OutputTensor], max_bytes: int) -> list[list[OutputTensor]]:
    """Greedy, order-preserving split; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards if shards[0] else []
