"""The recipe: everything `graft merge` needs, as typed data that can be diffed, checked in and reproduced.

λ(tensor) = scale × layer_factor(layer) × group_factor(group), where the per-layer factor comes from exactly one of

* ``layers``: one factor per layer, listed in full;
* ``blocks``: B factors; layer ℓ of L belongs to block ⌊ℓ·B/L⌋ (contiguous blocks, sizes differing by at most 1);
* ``control_points``: K factors at evenly spaced depths 0, 1/(K−1), …, 1; layer ℓ sits at depth ℓ/(L−1) and gets
  the linear interpolation of its two neighbouring points (K = 1 means a constant);

or is 1 when none is given. Tensors outside the layer stack (embeddings, head, final norm) get layer factor 1:
only their group factor and the scale apply.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from graft.engines.mapping import GROUPS, Group, Rule
from graft.engines.operators import LINEAR, OperatorSpec
from graft.errors import UsageError
from graft.io.hub import looks_like_hub_id
from graft.io.writer import parse_size
from graft.schema import FiniteFloat, describe_validation_error, load_yaml_file

RECIPE_VERSION = 1
# |λ| beyond this is far outside what a graft uses (τ is a fine-tuning difference): worth a warning.
LARGE_LAMBDA = 10.0
DEFAULT_GROUP_FACTORS: dict[Group, float] = {g: (0.0 if g == "vision" else 1.0) for g in GROUPS}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Coefficients(_Strict):
    scale: FiniteFloat = 1.0
    layers: list[FiniteFloat] | None = None
    blocks: Annotated[list[FiniteFloat], Field(min_length=1)] | None = None
    control_points: Annotated[list[FiniteFloat], Field(min_length=1)] | None = None
    groups: dict[Group, FiniteFloat] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_layer_rule(self) -> Coefficients:
        given = [k for k in ("layers", "blocks", "control_points") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of layers, blocks, control_points (got {', '.join(given)})")
        return self

    def group_factor(self, group: Group) -> float:
        return self.groups.get(group, DEFAULT_GROUP_FACTORS[group])

    def layer_factors(self, num_layers: int) -> list[float]:
        """The per-layer factor of every layer 0..L-1 (see the module docstring for the exact rule)."""
        if self.layers is not None:
            if len(self.layers) != num_layers:
                raise UsageError(
                    f"coefficients.layers has {len(self.layers)} entries but the model has {num_layers} layers; "
                    "give one per layer, or use blocks / control_points"
                )
            return list(self.layers)
        if self.blocks is not None:
            blocks = len(self.blocks)
            if blocks > num_layers:
                raise UsageError(f"coefficients.blocks has {blocks} entries for only {num_layers} layers")
            return [self.blocks[(layer * blocks) // num_layers] for layer in range(num_layers)]
        if self.control_points is not None:
            points = self.control_points
            if len(points) == 1 or num_layers == 1:
                return [points[0]] * num_layers
            depth = np.arange(num_layers) / (num_layers - 1)
            knots = np.linspace(0.0, 1.0, len(points))
            return [float(v) for v in np.interp(depth, knots, points)]
        return [1.0] * num_layers

    def lam(self, layer: int | None, group: Group, layer_factors: list[float]) -> float:
        factor = 1.0 if layer is None else layer_factors[layer]
        value = self.scale * factor * self.group_factor(group)
        if not math.isfinite(value):  # finite factors whose product overflows
            where = f"layer {layer}, group {group}" if layer is not None else f"group {group}"
            raise UsageError(f"coefficients: λ for {where} is {value} (scale × layer × group factor overflows); "
                             f"use factors of a sensible size (|λ| ≤ {LARGE_LAMBDA:g} in practice)")
        return value


class MapRule(_Strict):
    match: str
    replace: str

    @field_validator("match")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _replacement_fits(self) -> MapRule:
        """A bad group reference in `replace` (\\9, \\g<x>) would only fail while merging: check it now, on a
        pattern with the same groups that always matches."""
        try:
            re.compile(f"(?:{self.match})|").match("").expand(self.replace)  # type: ignore[union-attr]
        except (re.error, IndexError) as exc:
            raise ValueError(f"replace {self.replace!r} does not fit match {self.match!r}: {exc}") from exc
        return self

    def to_rule(self) -> Rule:
        return Rule(self.match, self.replace)


class MappingRules(_Strict):
    """Name mapping overrides and tensor selection (regexes; include/exclude are searched in *target* names)."""

    rules: list[MapRule] = Field(default_factory=list)
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)

    @field_validator("include", "exclude")
    @classmethod
    def _all_compile(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
        return values

    def selects(self, target_name: str) -> bool:
        if self.include and not any(re.search(p, target_name) for p in self.include):
            return False
        return not any(re.search(p, target_name) for p in self.exclude)


# The range of each size option, in bytes: `--help`, docs/cli.md and the recipe fields say the same. A chunk is the
# unit of work and memory of a streamed merge (held a few times over: read ahead, fp32 temporaries, written behind):
# below 1 KB the per-chunk overhead makes even a tiny model take minutes; above 4 GB a merge holds tens of GB. A
# shard of at least 1 KB (a smaller limit gives every tensor its own file, as 1 KB already does) and at most 1 TB.
SIZE_RANGES: dict[str, tuple[int, int]] = {"chunk_size": (10**3, 4 * 10**9), "shard_size": (10**3, 10**12)}


def size_in_range(field: str, text: str | int) -> int:
    """The bytes a size option (`chunk_size`, `shard_size`) names, or ValueError saying what a size is and which
    range it must fall in."""
    from graft.display import human_size

    nbytes = parse_size(text)
    low, high = SIZE_RANGES[field]
    if not low <= nbytes <= high:
        raise ValueError(f"{text!r} is {human_size(nbytes)}, outside the range {human_size(low)} to "
                         f"{human_size(high)}")
    return nbytes


class Options(_Strict):
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    shard_size: str | None = None  # bytes per output shard, e.g. "5GB"; None mirrors the target's shards
    device: Literal["auto", "cpu", "cuda"] = "auto"
    origin: str | None = None
    orthogonalize: bool = False
    chunk_size: str | None = None  # None: 8MB on CPU, 64MB on CUDA (see merge.default_chunk_bytes)
    strict: bool = False  # plan warnings are errors (exit 4): a CI job can gate on them
    allow_partial: bool = False  # graft even when a donor layer lands in a target layer of another structure

    @field_validator("shard_size", "chunk_size")
    @classmethod
    def _is_size(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            size_in_range(str(info.field_name), value)  # its ValueError says what a size looks like
        return value

    @model_validator(mode="after")
    def _origin_for_orthogonal(self) -> Options:
        if self.orthogonalize and not self.origin:
            raise ValueError("orthogonalize needs options.origin (the model the target was fine-tuned from)")
        return self


def _operator(raw: object) -> OperatorSpec | None:
    return None if raw is None else OperatorSpec.parse(raw)


# `operator: NAME` or `{name: NAME, PARAM: VALUE, ...}` (graft.engines.operators); None: the legacy spelling decides
# (options.orthogonalize: true is `operator: orthogonal`, else linear).
OperatorField = Annotated[InstanceOf[OperatorSpec] | None, BeforeValidator(_operator),
                          PlainSerializer(lambda spec: None if spec is None else spec.to_data())]


class Recipe(_Strict):
    """A graft recipe. Relative paths are resolved against the recipe file's folder."""

    graft_recipe: Literal[1] = RECIPE_VERSION
    description: str | None = None
    target: str | None = None
    vector: str | None = None
    out: str | None = None
    coefficients: Coefficients = Field(default_factory=Coefficients)
    operator: OperatorField = None
    mapping: MappingRules = Field(default_factory=MappingRules)
    options: Options = Field(default_factory=Options)

    @model_validator(mode="after")
    def _operator_fits_options(self) -> Recipe:
        spec = self.operator
        if spec is not None and self.options.orthogonalize and spec.name != "orthogonal":
            raise ValueError(f"operator {spec.name} and options.orthogonalize: true disagree; drop orthogonalize "
                             "(it is the old spelling of operator: orthogonal)")
        if spec is not None and spec.uses_origin and not self.options.origin:
            raise ValueError(f"operator {spec.name} needs options.origin (the model the target was fine-tuned "
                             "from)")
        return self

    @property
    def operator_spec(self) -> OperatorSpec:
        """The operator this recipe grafts with: `operator`, else orthogonal when options.orthogonalize, else
        linear."""
        if self.operator is not None:
            return self.operator
        return OperatorSpec.parse("orthogonal") if self.options.orthogonalize else LINEAR

    def with_operator(self, spec: OperatorSpec) -> Recipe:
        """A copy grafting with `spec` (options.orthogonalize kept in step, the legacy spelling of orthogonal)."""
        options = self.options.model_copy(update={"orthogonalize": spec.name == "orthogonal"})
        return self.model_copy(update={"operator": spec, "options": options})

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        path = Path(path)
        data = load_yaml_file(path, "recipe") or {}
        recipe = cls.parse(data, source=str(path))
        return recipe.with_paths_relative_to(path.parent)

    @classmethod
    def parse(cls, data: object, *, source: str = "recipe") -> Recipe:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise UsageError(f"{source}: {describe_validation_error(exc)}") from exc

    def with_paths_relative_to(self, folder: Path) -> Recipe:
        """Relative paths point into the recipe's folder, except hub ids (`org/name`) that are not folders there."""

        def fix(value: str | None, *, may_be_hub_id: bool = True) -> str | None:
            if value is None or Path(value).expanduser().is_absolute():
                return value
            # `org/name` is a hub id unless the recipe's folder has an `org/` (then it is a local path, maybe a typo)
            if may_be_hub_id and looks_like_hub_id(value) and not (folder / value.split("/")[0]).exists():
                return value
            return str(folder / value)

        options = self.options.model_copy(update={"origin": fix(self.options.origin)})
        return self.model_copy(update={"target": fix(self.target), "vector": fix(self.vector),
                                       "out": fix(self.out, may_be_hub_id=False), "options": options})

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False)

    def updated(self, **changes: object) -> Recipe:
        """A copy with some fields replaced (nested models given as dicts of their own changes; `operator` whole),
        re-validated."""
        data = self.model_dump()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict) and key != "operator":
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return Recipe.parse(data, source="command-line options")


__all__ = ["LARGE_LAMBDA", "SIZE_RANGES", "Coefficients", "MappingRules", "Options", "Recipe",
           "describe_validation_error", "size_in_range"]
