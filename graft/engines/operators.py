"""Graft operators: how the safety vector τ becomes what is added to a target tensor.

Every operator has the form θ' = θ + λ·f(τ): it turns τ (and, when it declares so, the target's own update
τ_med = θ − θ_origin) into an *effective τ* f(τ) in fp32, and `graft.engines.ops.graft_rows` adds λ·f(τ) with the one
fixed arithmetic. λ stays outside the operator on purpose: the resident graft of `graft search` computes f(τ) once
and then runs the same one-pass θ + λ·f(τ) per trial, and the streamed merge calls the very same `transform` per
chunk, so the two engines agree bit for bit by construction.

An operator is a `GraftOperator` subclass registered under a name (`@register`) with a pydantic model of its
parameters (`Params`), so recipes (`operator: {name: dare, density: 0.3}`), the CLI (`--operator dare
--operator-param density=0.3`), search spaces, `graft plan` and the model card find it by name and read its
declared parameters. Its contract:

* `prepare(tensor, chunks)`: an optional whole-tensor pre-pass (orthogonal needs ⟨τ,τ_med⟩ and ‖τ_med‖², trim its
  magnitude threshold). `chunks()` iterates the tensor's flat element ranges in order and may be called again for
  another pass; what it returns is handed to every `transform` of that tensor.
* `transform(chunk, tensor, state)`: the effective τ of one flat element range, a function of that range's
  elements, their flat indices (`chunk.start`) and `state` only. Elementwise given the state, so how the tensor is
  cut into chunks cannot change a byte.

`linear`, `orthogonal`, `dare` and `trim` are registered below; docs/extending.md shows how to add one.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import torch
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from graft.engines.ops import orthogonal_tau, projection_coefficient, projection_terms


class OperatorParams(BaseModel):
    """An operator's declared parameters (strict: unknown keys are refused, naming the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=OperatorParams)


@dataclass(frozen=True)
class TensorRef:
    """The tensor an operator works on: the vector's name for τ, the target's name, and the grafted elements (the
    flat prefix: all of them, or a grown vocabulary's donor rows)."""

    donor: str
    target: str
    numel: int


@dataclass(frozen=True)
class Chunk:
    """A flat range [start, start + len(tau)) of one tensor: τ as stored, and θ and θ_origin for an operator that
    uses the origin (None otherwise)."""

    start: int
    tau: torch.Tensor
    theta: torch.Tensor | None = None
    origin: torch.Tensor | None = None


Chunks = Callable[[], Iterable[Chunk]]


class GraftOperator(ABC, Generic[P]):
    """One way of turning τ into the effective τ added as θ + λ·f(τ). Subclass, set `name`, `Params` and
    `summary`, implement `transform` (and `prepare` for a whole-tensor pre-pass), and decorate with `@register`."""

    name: ClassVar[str]
    Params: ClassVar[type[OperatorParams]]
    summary: ClassVar[str]  # one line for the model card and `graft plan`: what it does to τ

    def __init__(self, params: P):
        self.params = params

    @property
    def uses_origin(self) -> bool:
        """Whether `transform` needs θ and θ_origin (the recipe must then name `options.origin`)."""
        return False

    def prepare(self, tensor: TensorRef, chunks: Chunks) -> Any:
        """Whole-tensor pre-pass; its result is passed to every `transform` of the tensor. None by default."""
        return None

    @abstractmethod
    def transform(self, chunk: Chunk, tensor: TensorRef, state: Any) -> torch.Tensor:
        """The effective τ of this chunk (fp32, or τ itself when it is unchanged)."""


OPERATORS: dict[str, type[GraftOperator[Any]]] = {}


def register(cls: type[GraftOperator[Any]]) -> type[GraftOperator[Any]]:
    """Make an operator known by its name to recipes, the CLI, search spaces and the model card."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"{cls.__name__}: an operator needs a `name` that is an identifier, got {name!r}")
    if name in OPERATORS and OPERATORS[name] is not cls:
        raise TypeError(f"an operator named {name!r} is already registered ({OPERATORS[name].__name__})")
    if not (isinstance(getattr(cls, "Params", None), type) and issubclass(cls.Params, OperatorParams)):
        raise TypeError(f"{cls.__name__}: `Params` must be a subclass of graft.engines.operators.OperatorParams")
    OPERATORS[name] = cls
    return cls


class FieldError(ValueError):
    """A value error inside a nested field: `path` is appended to the field's own dotted path in messages."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class OperatorSpec:
    """A registered operator's name and validated parameters: what a recipe's `operator` key holds."""

    name: str
    params: OperatorParams

    @classmethod
    def parse(cls, raw: object) -> OperatorSpec:
        """`NAME` or `{name: NAME, PARAM: VALUE, ...}`; a `FieldError` names the wrong parameter."""
        if isinstance(raw, OperatorSpec):
            return raw
        if isinstance(raw, str):
            name, values = raw, {}
        elif isinstance(raw, Mapping):
            values = dict(raw)
            name = values.pop("name", None)
            if not isinstance(name, str):
                raise FieldError("name", f"missing: give the operator's name ({', '.join(OPERATORS)})")
        else:
            raise ValueError(f"expected an operator name ({', '.join(OPERATORS)}) or {{name: NAME, PARAM: VALUE}}")
        if name not in OPERATORS:
            raise FieldError("name", f"unknown operator {name!r}; known: {', '.join(OPERATORS)}")
        try:
            params = OPERATORS[name].Params.model_validate(values)
        except ValidationError as exc:
            from graft.schema import describe_validation_error

            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            text = describe_validation_error(exc, limit=1)
            raise FieldError(where, text.removeprefix(f"{where}: ")) from None
        return cls(name, params)

    def build(self) -> GraftOperator[Any]:
        return OPERATORS[self.name](self.params)

    @property
    def uses_origin(self) -> bool:
        return self.build().uses_origin

    def to_data(self) -> str | dict[str, Any]:
        """The recipe spelling: the bare name when the operator has no parameters."""
        values = self.params.model_dump(mode="json")
        return {"name": self.name, **values} if values else self.name

    def describe(self) -> str:
        """One line: name, parameters and what it does (model card, `graft plan`)."""
        values = self.params.model_dump(mode="json")
        args = f" ({', '.join(f'{k} {v}' for k, v in values.items())})" if values else ""
        return f"{self.name}{args}: {OPERATORS[self.name].summary}"


# -- the operators ----------------------------------------------------------------------------------------------------
class NoParams(OperatorParams):
    pass


@register
class Linear(GraftOperator[NoParams]):
    """θ + λ·τ: task arithmetic (RESTA's safety vector added as is)."""

    name = "linear"
    Params = NoParams
    summary = "θ + λ·τ (τ added as is)"

    def transform(self, chunk: Chunk, tensor: TensorRef, state: Any) -> torch.Tensor:
        return chunk.tau


LINEAR = OperatorSpec("linear", NoParams())  # what a recipe without `operator` grafts with


@register
class Orthogonal(GraftOperator[NoParams]):
    """θ + λ·(τ − c·τ_med), c = ⟨τ,τ_med⟩/‖τ_med‖² over the whole tensor: τ loses its component along what the
    target's own fine-tune changed, so grafting does not undo it to first order."""

    name = "orthogonal"
    Params = NoParams
    summary = "τ projected off τ_med = θ_target − θ_origin per tensor (needs options.origin)"

    @property
    def uses_origin(self) -> bool:
        return True

    def prepare(self, tensor: TensorRef, chunks: Chunks) -> float:
        dot = sq = 0.0
        for chunk in chunks():
            assert chunk.theta is not None and chunk.origin is not None
            d, s = projection_terms(chunk.theta, chunk.tau, chunk.origin)
            dot += d
            sq += s
        return projection_coefficient(dot, sq)

    def transform(self, chunk: Chunk, tensor: TensorRef, state: float) -> torch.Tensor:
        assert chunk.theta is not None and chunk.origin is not None
        return orthogonal_tau(chunk.theta, chunk.tau, chunk.origin, state)


def _not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be a number in (0, 1], got {value}")
    return value


def _in_unit_interval(value: float) -> float:
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise ValueError(f"must be in (0, 1], got {value}")
    return value


Density = Annotated[float, BeforeValidator(_not_bool), AfterValidator(_in_unit_interval)]


class DareParams(OperatorParams):
    density: Density  # the fraction of τ's entries kept (1 − DARE's drop rate p)
    seed: int = 0


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for x in [0, 2³²) held in int64, split in 16-bit halves so no product overflows int64."""
    return ((x * (c & 0xFFFF)) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection of [0, 2³²) whose every output bit depends on every input bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def dare_keys(seed: int, donor: str) -> tuple[int, int]:
    """Two 32-bit keys from (seed, τ's tensor name) by sha256: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"graft-dare:{seed}:{donor}".encode()).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:8], "little")


def dare_keep(keys: tuple[int, int], start: int, count: int, density: float, device: torch.device) -> torch.Tensor:
    """Which of the flat elements [start, start + count) DARE keeps: a counter-based draw, one hash per element
    index (h = fmix32(fmix32(i_lo ⊕ k1) ⊕ ((i_hi + k2) mod 2³²)), kept when h < ⌊density·2³²⌋), so the mask of an
    element depends on its index alone, never on how the tensor is chunked, and costs no memory beyond the chunk."""
    index = torch.arange(start, start + count, dtype=torch.int64, device=device)
    h = _fmix32((index & _MASK32) ^ keys[0])
    h = _fmix32(h ^ (((index >> 32) + keys[1]) & _MASK32))
    return h < math.floor(density * 2**32)


@register
class Dare(GraftOperator[DareParams]):
    """DARE (drop and rescale): each entry of τ is kept with probability `density` and rescaled by 1/density, so
    the expected update is τ; what RESTA does before adding its safety vector."""

    name = "dare"
    Params = DareParams
    summary = "drops each entry of τ with probability 1 − density and rescales the rest by 1/density (seeded)"

    def transform(self, chunk: Chunk, tensor: TensorRef, state: Any) -> torch.Tensor:
        p = self.params
        keep = dare_keep(dare_keys(p.seed, tensor.donor), chunk.start, chunk.tau.numel(), p.density,
                         chunk.tau.device)
        scaled = chunk.tau.to(torch.float32, copy=True).mul_(1.0 / p.density)
        return scaled.masked_fill_(~keep.view(chunk.tau.shape), 0.0)


class TrimParams(OperatorParams):
    density: Density  # the fraction of τ's entries kept: the largest |τ| of each tensor
    elect_sign: bool = False  # also drop entries whose sign disagrees with τ_med = θ_target − θ_origin


@dataclass(frozen=True)
class TrimThreshold:
    """Keep |τ| > value, and |τ| == value at flat indices below `tie_end` (ties broken by index): exactly k kept."""

    value: float
    tie_end: int


def kept_count(density: float, numel: int) -> int:
    """k = round(density · n), at least 1: the entries trim keeps."""
    return min(numel, max(1, round(density * numel)))


def _magnitude_bits(tau: torch.Tensor) -> torch.Tensor:
    """|τ| in fp32 as int32 bit patterns: for non-negative floats the integer order is the float order."""
    return tau.to(torch.float32).abs().view(torch.int32).to(torch.int64)


def trim_threshold(chunks: Chunks, k: int) -> TrimThreshold:
    """The k-th largest |τ| over the whole tensor, exactly, in memory bounded by a chunk: a radix select over the
    fp32 bit patterns (one pass counting the high 16 bits, one the low 16 bits within the chosen high bin), then
    one pass to find where the ties still kept end. Counts are integers, so chunking cannot change the answer."""
    bins = 1 << 16
    high = torch.zeros(bins, dtype=torch.int64)
    for chunk in chunks():
        high += torch.bincount((_magnitude_bits(chunk.tau) >> 16).reshape(-1).cpu(), minlength=bins)
    hi, above = _select_from_top(high, k)
    low = torch.zeros(bins, dtype=torch.int64)
    for chunk in chunks():
        bits = _magnitude_bits(chunk.tau).reshape(-1).cpu()
        low += torch.bincount(bits[(bits >> 16) == hi] & 0xFFFF, minlength=bins)
    lo, above_in_bin = _select_from_top(low, k - above)
    value_bits = (hi << 16) | lo
    ties_kept = k - above - above_in_bin
    value = torch.tensor([value_bits], dtype=torch.int32).view(torch.float32).item()
    if ties_kept == int(low[lo]):
        return TrimThreshold(value, 2**63 - 1)
    seen = 0
    for chunk in chunks():
        ties = (_magnitude_bits(chunk.tau).reshape(-1).cpu() == value_bits).nonzero().reshape(-1)
        if seen + ties.numel() >= ties_kept:
            return TrimThreshold(value, chunk.start + int(ties[ties_kept - seen - 1]) + 1)
        seen += ties.numel()
    raise AssertionError("trim: the tensor changed between passes")


def _select_from_top(counts: torch.Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th largest element (bins in increasing order), and how many lie in higher bins."""
    from_top = counts.flip(0).cumsum(0)
    index = int(torch.searchsorted(from_top, k))
    above = int(from_top[index - 1]) if index > 0 else 0
    return counts.numel() - 1 - index, above


@register
class Trim(GraftOperator[TrimParams]):
    """TIES' trim step: per tensor, keep the `density` fraction of τ's entries largest in magnitude and zero the
    rest; with `elect_sign`, also zero the entries whose sign conflicts with the target's own update τ_med (the
    one-vector form of TIES' sign election: τ_med is the other task's vector)."""

    name = "trim"
    Params = TrimParams
    summary = "keeps the density fraction of τ's largest-magnitude entries per tensor (TIES' trim)"

    @property
    def uses_origin(self) -> bool:
        return self.params.elect_sign

    def prepare(self, tensor: TensorRef, chunks: Chunks) -> TrimThreshold | None:
        k = kept_count(self.params.density, tensor.numel)
        return None if k >= tensor.numel else trim_threshold(chunks, k)

    def transform(self, chunk: Chunk, tensor: TensorRef, state: TrimThreshold | None) -> torch.Tensor:
        tau = chunk.tau.to(torch.float32, copy=True)
        if state is None:
            keep = torch.ones_like(tau, dtype=torch.bool)
        else:
            magnitude = tau.abs()
            index = torch.arange(chunk.start, chunk.start + tau.numel(), device=tau.device).view(tau.shape)
            keep = (magnitude > state.value) | ((magnitude == state.value) & (index < state.tie_end))
        if self.params.elect_sign:
            assert chunk.theta is not None and chunk.origin is not None
            med = chunk.theta.to(torch.float32) - chunk.origin.to(torch.float32)  # its sign is exact in fp32
            keep &= ~(((tau > 0) & (med < 0)) | ((tau < 0) & (med > 0)))
        return tau.masked_fill_(~keep, 0.0)


__all__ = ["LINEAR", "OPERATORS", "Chunk", "Chunks", "FieldError", "GraftOperator", "OperatorParams",
           "OperatorSpec", "TensorRef", "TrimThreshold", "dare_keep", "dare_keys", "kept_count", "register",
           "trim_threshold"]
