"""Every dtype table graft uses, in one place: safetensors' dtype tags (what headers say) with their torch dtypes
and sizes, and the three float types a user may ask for by name (`--dtype`, recipes, the resident model), with the
tag each is written as. Readers, writers, the merge, the vector and the evaluation engine all look dtypes up here,
so one name never means two things."""

from __future__ import annotations

import torch

from graft.errors import UsageError

# safetensors dtype tag -> (torch dtype, bytes per element). From the safetensors format specification.
TAGS: dict[str, tuple[torch.dtype, int]] = {
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
    "U16": (torch.uint16, 2),
    "U32": (torch.uint32, 4),
    "U64": (torch.uint64, 8),
}
TAG_OF_DTYPE = {torch_dtype: tag for tag, (torch_dtype, _) in TAGS.items()}
FLOAT_TAGS = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# Every dtype string the format defines (graft reads the ones in TAGS; the rest are refused as unsupported).
SAFETENSORS_TAGS = frozenset({*TAGS, "U16", "U32", "U64", "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "C64"})

# The float types a user names, and the tag each is stored as.
CAST_NAMES: dict[str, str] = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
ALIASES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # short names the evaluation engine accepts


def torch_dtype_named(name: str, *, what: str = "--dtype") -> torch.dtype:
    """The torch dtype of a float type named by a user (`bfloat16`, `bf16`, ...); a one-line usage error else."""
    full = ALIASES.get(name, name)
    if full not in CAST_NAMES:
        raise UsageError(f"{what} {name}: expected {', '.join(CAST_NAMES)}")
    return TAGS[CAST_NAMES[full]][0]


__all__ = ["ALIASES", "CAST_NAMES", "FLOAT_TAGS", "SAFETENSORS_TAGS", "TAGS", "TAG_OF_DTYPE", "torch_dtype_named"]
