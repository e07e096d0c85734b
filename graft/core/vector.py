"""The vector folder's format (version 1): what `vector.json` says about τ = θ_aligned − θ_base.

A vector folder is safetensors shards (`vector.safetensors`, or `vector-0000i-of-0000N.safetensors` with
`vector.safetensors.index.json`) plus `vector.json`, a manifest naming both sources with their content hashes and
describing every tensor (shape, layer, module group, ‖τ‖, ‖τ‖/‖θ_base‖, how many elements the storage dtype could
not hold exactly). It is an artefact people share, so it must say on its own what it is and where it came from.
Reading a folder is graft.io.vector_folder's job; writing one, graft.engines.extract's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graft.core.dtypes import CAST_NAMES, FLOAT_TAGS
from graft.core.mapping import Group
from graft.errors import InputError
from graft.schema import FiniteFloat, describe_validation_error, lone_surrogate

MANIFEST = "vector.json"
FORMAT = "graft-vector"
FORMAT_VERSION = 1
STORAGE_DTYPES = {"auto": None, **CAST_NAMES}  # what `graft extract --dtype` may store τ as


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceInfo(_Frozen):
    path: str
    model_type: str | None = None
    architectures: list[str] | None = None
    sha256: dict[str, str] | None = None  # weight file name -> content hash (the hub's LFS oid)
    hub: str | None = None  # the hub repository the source was downloaded from
    revision: str | None = None  # the commit it resolved to


Count = Annotated[int, Field(ge=0)]


class VectorTensor(_Frozen):
    shape: list[Count]
    dtype: str
    layer: Count | None
    group: Group
    norm: FiniteFloat | None  # None: τ holds NaN/Inf (extracted with --allow-nonfinite)
    rel_norm: FiniteFloat | None
    inexact: Count  # elements whose fp32 difference the storage dtype rounds

    @field_validator("dtype")
    @classmethod
    def _float_dtype(cls, value: str) -> str:
        if value not in FLOAT_TAGS:
            raise ValueError(f"must be a floating-point safetensors dtype ({', '.join(sorted(FLOAT_TAGS))}), "
                             f"got {value!r}")
        return value


class VectorManifest(_Frozen):
    format: Literal["graft-vector"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    graft_version: str
    kind: str = "safety"
    base: SourceInfo
    aligned: SourceInfo
    dtype: str  # "auto" (each tensor in its source dtype) or the storage dtype asked for
    backbone_prefix: str
    num_layers: Annotated[int, Field(ge=1)]
    tensors: dict[str, VectorTensor]
    total_norm: FiniteFloat | None  # None: some τ holds NaN/Inf (extracted with --allow-nonfinite)
    inexact_elements: Count
    total_elements: Count

    @model_validator(mode="after")
    def _layers_in_range(self) -> VectorManifest:
        for name, tensor in self.tensors.items():
            if tensor.layer is not None and tensor.layer >= self.num_layers:
                raise ValueError(f"tensors.{name}.layer: {tensor.layer} but num_layers is {self.num_layers}")
        return self


def parse_manifest(raw: object, where: Path) -> VectorManifest:
    """`vector.json` as read (`raw`, from the file at `where`), checked against the format; an InputError naming the
    file and the field otherwise."""
    if (field := lone_surrogate(raw)) is not None:
        raise InputError(f"{where}: invalid vector manifest: {field} holds a lone surrogate, an escape that is not "
                         "Unicode text; re-extract the vector")
    try:
        return VectorManifest.model_validate(raw)
    except ValidationError as exc:
        raise InputError(f"{where}: invalid vector manifest: {describe_validation_error(exc)}") from exc


__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "STORAGE_DTYPES", "SourceInfo", "VectorManifest", "VectorTensor",
           "parse_manifest"]
