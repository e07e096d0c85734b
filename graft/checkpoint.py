"""Read Hugging Face safetensors folders lazily: headers first, tensor bytes only when asked.

Headers are parsed and validated here (not by `safe_open`) because graft needs what the Python API hides: each
tensor's byte offset, so untouched tensors can be copied as raw byte ranges, and a precise error for a truncated or
corrupt shard *before* any long I/O starts. Data is read with `pread` into private buffers rather than mmap, so a
short file raises an error instead of SIGBUS and memory use is the chunk being processed, nothing more.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from graft.errors import InputError

# safetensors dtype tag -> (torch dtype, bytes per element). From the safetensors format specification.
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
TAG_OF_DTYPE = {torch_dtype: tag for tag, (torch_dtype, _) in DTYPES.items()}
FLOAT_TAGS = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit safetensors itself enforces

log = logging.getLogger(__name__)

if sys.byteorder != "little":  # safetensors stores little-endian; graft copies raw bytes
    raise ImportError("graft supports little-endian machines only")


def containment_root(root: Path) -> Path:
    """The folder a model folder's symlinks may point into: the folder itself, or for a Hugging Face cache
    snapshot (models--org--name/snapshots/REV, whose files link to ../../blobs) the repository's cache folder."""
    root = root.resolve()
    return root.parent.parent if root.parent.name == "snapshots" else root


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: Path, within: Path | None = None) -> os.stat_result:
    """Refuse, without opening it, anything but a regular file (a FIFO would block forever) and a symlink that
    leads out of `within` (an input folder never hands graft a file from elsewhere)."""
    try:
        if within is not None:
            real = path.resolve()
            if real != within and within not in real.parents:
                how = f"a symlink to {real}" if path.is_symlink() else f"resolves to {real}"
                raise InputError(f"{path}: {how}, outside the model folder; graft never follows paths out of an "
                                 "input (copy the file in)")
        info = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror}); check the path and permissions") from exc
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: {_kind(info.st_mode)}, not a regular file; graft reads only regular files")
    return info


def open_regular(path: Path, within: Path | None = None) -> int:
    """A read-only descriptor on a regular file: checked before opening, opened non-blocking (a FIFO swapped in
    between cannot hang us) and checked again on the descriptor."""
    check_regular(path, within)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror})") from exc
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputError(f"{path}: {_kind(mode)}, not a regular file; graft reads only regular files")
    os.set_blocking(fd, True)
    return fd


def read_regular_text(path: Path, within: Path | None = None) -> str:
    with os.fdopen(open_regular(path, within), "r", encoding="utf-8") as handle:
        return handle.read()


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives on disk and what it is, from the shard header alone."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        """Length of the first dimension: the unit graft streams in (a 0-d tensor is one row)."""
        return self.shape[0] if self.shape else 1

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if self.shape else ()

    @property
    def row_nbytes(self) -> int:
        return self.nbytes // self.rows if self.rows else 0

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_TAGS


@dataclass(frozen=True)
class ShardHeader:
    """One safetensors file: its tensors in on-disk order and its free-form metadata."""

    file: Path
    metadata: dict[str, str]
    tensors: tuple[TensorInfo, ...]


def read_shard_header(file: Path, within: Path | None = None) -> ShardHeader:
    """Parse and validate a safetensors header; every check names the file and says what to do."""
    fd = open_regular(file, within)
    try:
        size = os.fstat(fd).st_size
        with os.fdopen(fd, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise InputError(f"{file}: truncated: shorter than the 8-byte safetensors header; re-download it")
            header_len = int.from_bytes(prefix, "little")
            if header_len > MAX_HEADER_BYTES or header_len > size - 8:
                raise InputError(
                    f"{file}: corrupt safetensors header (declares {header_len} header bytes in a "
                    f"{size}-byte file); re-download or re-save it"
                )
            raw = handle.read(header_len)
    except OSError as exc:
        raise InputError(f"{file}: cannot read ({exc.strerror}); check the path and permissions") from exc
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{file}: corrupt safetensors header (not valid JSON); re-download or re-save it") from exc

    data_start = 8 + header_len
    data_size = size - data_start
    metadata = header.pop("__metadata__", None) or {}
    tensors = [_tensor_info(file, name, entry, data_start) for name, entry in header.items()]
    tensors.sort(key=lambda info: info.offset)
    end = data_start
    for info in tensors:
        if info.offset != end and info.nbytes:
            raise InputError(f"{file}: corrupt header: tensor {info.name!r} does not start where the previous ends")
        end = max(end, info.offset + info.nbytes)
    if end - data_start > data_size:
        last = tensors[-1].name if tensors else "?"
        raise InputError(
            f"{file}: truncated: tensor data needs {end - data_start} bytes but the file holds {data_size} "
            f"(last tensor {last!r}); re-download or re-save it"
        )
    return ShardHeader(file=file, metadata=dict(metadata), tensors=tuple(tensors))


def _tensor_info(file: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    try:
        dtype = entry["dtype"]  # type: ignore[index]
        shape = tuple(int(d) for d in entry["shape"])  # type: ignore[index]
        begin, stop = (int(x) for x in entry["data_offsets"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError) as exc:
        raise InputError(f"{file}: corrupt header entry for tensor {name!r}; re-download or re-save it") from exc
    if dtype not in DTYPES:
        raise InputError(f"{file}: tensor {name!r} has dtype {dtype!r}, which graft does not support")
    if any(d < 0 for d in shape) or stop - begin != math.prod(shape) * DTYPES[dtype][1]:
        raise InputError(f"{file}: corrupt header: tensor {name!r} byte range does not match shape {list(shape)}")
    return TensorInfo(name, dtype, shape, file, data_start + begin, stop - begin)


@dataclass
class Checkpoint:
    """A folder of safetensors weights (one file, or shards with an index) plus its non-weight files.

    Opening reads and validates every header, so errors surface before any tensor data is touched.
    """

    root: Path
    shards: tuple[ShardHeader, ...]
    tensors: dict[str, TensorInfo]
    index_file: Path | None
    index_metadata: dict[str, object] = field(default_factory=dict)
    _fds: dict[Path, int] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, role: str = "checkpoint") -> Checkpoint:
        root = Path(path)
        if not root.exists():
            raise InputError(f"{root}: no such {role} folder; check the path (or pass a Hugging Face hub id)")
        if not root.is_dir():
            raise InputError(f"{root}: the {role} must be a model folder, not a file")
        within = containment_root(root)
        index_file, files, index_metadata, weight_map = _locate_weights(root, role, within)
        shards = tuple(read_shard_header(f, within) for f in files)
        tensors: dict[str, TensorInfo] = {}
        for shard in shards:
            for info in shard.tensors:
                if info.name in tensors:
                    raise InputError(f"{shard.file}: tensor {info.name!r} is also stored in {tensors[info.name].file}")
                tensors[info.name] = info
        if weight_map is not None:
            _check_index_agrees(index_file, weight_map, tensors)
        return cls(root, shards, tensors, index_file, index_metadata)

    # -- metadata -------------------------------------------------------------------------------------------
    @functools.cached_property
    def config(self) -> dict[str, object]:
        """config.json as a dict ({} when absent), read once on first use."""
        path = self.root / "config.json"
        if not path.exists():
            return {}
        try:
            return json.loads(read_regular_text(path, containment_root(self.root)))
        except ValueError as exc:
            raise InputError(f"{path}: not valid JSON; fix or re-download it") from exc

    @property
    def nbytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    @property
    def weight_files(self) -> tuple[Path, ...]:
        files = tuple(shard.file for shard in self.shards)
        return (*files, self.index_file) if self.index_file else files

    def non_weight_files(self) -> list[Path]:
        """Files a merged folder should carry over (config, tokenizer, processor, templates...), as relative paths.

        Weights in any other format are left out: a stale pickle next to grafted safetensors would be a trap.
        """
        weights = {f.resolve() for f in self.weight_files}
        within = containment_root(self.root)
        keep = []
        for path in sorted(_walk_files(self.root)):
            rel = path.relative_to(self.root)
            if rel.parts[0].startswith(".") or path.resolve() in weights:
                continue
            real = path.resolve()
            if real != within and within not in real.parents:
                log.warning("%s: not copied: it links to %s, outside the model folder (graft never follows links "
                            "out of an input)", path, real)
                continue
            check_regular(path, within)  # a FIFO, socket or device among the side files is refused, never read
            if path.suffix in (*PICKLE_SUFFIXES, ".safetensors", ".gguf", ".h5", ".msgpack"):
                continue
            if path.name.endswith(".safetensors.index.json"):
                continue
            keep.append(rel)
        return keep

    # -- data -----------------------------------------------------------------------------------------------
    def read_rows(self, name: str, start: int = 0, stop: int | None = None, *, pin: bool = False) -> torch.Tensor:
        """Rows [start, stop) of a tensor in its stored dtype, in a fresh CPU buffer."""
        info = self.tensors[name]
        stop = info.rows if stop is None else stop
        nbytes = (stop - start) * info.row_nbytes
        buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
        self._pread_into(info, info.offset + start * info.row_nbytes, buffer)
        shape = (stop - start, *info.row_shape) if info.shape else ()
        return buffer.view(info.torch_dtype).reshape(shape)

    def read(self, name: str) -> torch.Tensor:
        return self.read_rows(name)

    def fd(self, file: Path) -> int:
        if file not in self._fds:
            try:
                self._fds[file] = os.open(file, os.O_RDONLY)
            except OSError as exc:
                raise InputError(f"{file}: cannot open ({exc.strerror})") from exc
        return self._fds[file]

    def _pread_into(self, info: TensorInfo, offset: int, buffer: torch.Tensor) -> None:
        view = memoryview(buffer.numpy()).cast("B")
        fd = self.fd(info.file)
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise InputError(f"{info.file}: truncated while reading tensor {info.name!r}; re-download it")
            done += got

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())


def _walk_files(root: Path) -> Iterator[Path]:
    """Every non-folder entry under `root`, never descending through a symlinked folder."""
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = Path(folder)
        yield from (base / name for name in files)
        yield from (base / name for name in dirs if (base / name).is_symlink())


def _locate_weights(
    root: Path, role: str, within: Path
) -> tuple[Path | None, list[Path], dict[str, object], dict[str, str] | None]:
    """Find the index or the single file; refuse pickles with the way to convert them."""
    indexes = sorted(root.glob("*.safetensors.index.json"))
    preferred = [p for p in indexes if p.name in ("model.safetensors.index.json", "vector.safetensors.index.json")]
    index = preferred[0] if preferred else (indexes[0] if len(indexes) == 1 else None)
    if index is None and len(indexes) > 1:
        names = ", ".join(p.name for p in indexes)
        raise InputError(f"{root}: several safetensors indexes ({names}); keep one or point graft at a folder with one")
    if index is not None:
        try:
            data = json.loads(read_regular_text(index, within))
            weight_map: dict[str, str] = dict(data["weight_map"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{index}: not a valid safetensors index (needs a 'weight_map' object)") from exc
        files = []
        for name in dict.fromkeys(weight_map.values()):
            shard = root / name
            if not os.path.lexists(shard):
                tensor = next(t for t, f in weight_map.items() if f == name)
                raise InputError(
                    f"{index}: names shard {name!r} (for tensor {tensor!r}) but {shard} does not exist; "
                    "re-download the missing shard"
                )
            files.append(shard)
        return index, files, dict(data.get("metadata") or {}), weight_map
    files = sorted(root.glob("*.safetensors"))
    if files:
        return None, files, {}, None
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise InputError(
            f"{root}: only pickled weights ({', '.join(pickles[:3])}); graft never unpickles files. Convert once in "
            "an environment you trust: load with transformers and save_pretrained(..., safe_serialization=True)"
        )
    raise InputError(f"{root}: no *.safetensors weights found in this {role} folder")


def _check_index_agrees(index: Path | None, weight_map: dict[str, str], tensors: dict[str, TensorInfo]) -> None:
    for name, file in weight_map.items():
        info = tensors.get(name)
        if info is None or info.file.name != file:
            raise InputError(f"{index}: lists tensor {name!r} in {file} but that shard does not hold it; re-download")


def sha256_file(path: Path, block: int = 16 * 1024 * 1024) -> str:
    """Content hash of a file; equal to the Hugging Face hub's LFS oid for that file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
