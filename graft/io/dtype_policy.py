"""The dtype policy: which stored tensors graft reads as numbers, and what it refuses, by name, before any work.

One policy for every command (docs/architecture.md, "Threat model", has it as a table). A tensor is *read as
numbers* when `merge` grafts it (θ, τ, θ_origin; the resident graft of `search` likewise), `extract` differences it
(base, aligned) or `inspect` scores it. Such a tensor must be stored as F32, F16 or BF16: float32 holds each of their
values exactly, so graft's fp32 arithmetic is exact on its inputs. Refused there, by name:

* F64: graft computes in float32 and would round it;
* F8_E4M3, F8_E5M2: three or two mantissa bits cannot hold λ·τ, and such weights usually carry scales;
* integers and BOOL: not floating point (an int8 aligned model gave a τ of garbage);
* any dtype, when the weights are quantized: a `quantization_config` in config.json (fp8, GPTQ, AWQ, bitsandbytes,
  compressed-tensors...), or a quantization companion beside the tensor (`weight_scale_inv` or `weight_scale` of
  an fp8 weight, `SCB`, `qzeros`, bitsandbytes' `weight.absmax`...): the stored numbers are not the weights.

Every dtype is copied byte for byte where it is not read as numbers, and `--dtype` casts every float tensor it does
not graft (F64 and fp8 included: fp8 → bf16 is exact); F4, F6_*, F8_E8M0 and C64 are refused at header parse.

The checks run where a plan is built (`graft.engines.plan.build_plan`, which `plan`, `merge`, `inspect` and the
resident graft all use, so `plan` exit 0 means `merge` does not fail on a dtype) and where `extract` pairs base and
aligned tensors: from headers and config.json only, never on the hot path.
"""

from __future__ import annotations

import re

from graft.errors import InputError
from graft.io.checkpoint import Checkpoint, TensorInfo

NUMERIC_TAGS = frozenset({"F32", "F16", "BF16"})
REFUSED_FLOATS = {
    "F64": "float64, which graft would round to float32 while computing; cast the checkpoint to float32 first",
    "F8_E4M3": "an 8-bit float, too coarse to hold λ·τ (and such weights usually carry scales); use the bfloat16 "
               "checkpoint, or dequantize it first",
    "F8_E5M2": "an 8-bit float, too coarse to hold λ·τ (and such weights usually carry scales); use the bfloat16 "
               "checkpoint, or dequantize it first",
}
# Tensors that sit beside a quantized weight and give its stored numbers their meaning (scales, zero points,
# packing): `P.weight` with one of these as `P.<name>` (or anything under `P.weight.`) is not a plain weight.
_COMPANION = re.compile(
    r"^(weight_scale(_inv|_2)?|weight_global_scale|input_scale|input_global_scale|output_scale|scales|qweight|"
    r"qzeros|g_idx|SCB|weight_format|weight_packed|weight_shape|weight_zero_point|weight_g_idx)$")


def dtype_problem(info: TensorInfo) -> str | None:
    """Why `info` may not be read as numbers (None: it may)."""
    if info.dtype in NUMERIC_TAGS:
        return None
    if info.dtype in REFUSED_FLOATS:
        return f"{info.dtype}, {REFUSED_FLOATS[info.dtype]}"
    return f"{info.dtype}, not floating point"


class NumericReads:
    """The policy applied to one checkpoint (`role`: target, origin, vector, base, aligned): `require(name)` refuses
    a tensor about to be read as numbers that may not be, naming the file, the tensor and why."""

    def __init__(self, checkpoint: Checkpoint, role: str) -> None:
        self.checkpoint = checkpoint
        self.role = role
        self._declared = quantization_config_problem(checkpoint)
        self._by_module: dict[str, list[str]] = {}
        for name in checkpoint.tensors:
            self._by_module.setdefault(_module(name), []).append(name)
            if ".weight." in name:  # bitsandbytes: P.weight.absmax, P.weight.quant_state...
                self._by_module.setdefault(name.split(".weight.", 1)[0], []).append(name)

    def require(self, name: str, *, doing: str, fix: str) -> None:
        info = self.checkpoint.tensors[name]
        problem = dtype_problem(info)
        if problem is not None:
            raise InputError(f"{info.file}: {self.role} tensor {name!r} would be {doing} but is {problem} (graft reads "
                             f"F32, F16 and BF16 as numbers); {fix}")
        self.refuse_quantized(name, doing=doing)

    def refuse_quantized(self, name: str, *, doing: str) -> None:
        """Refuse tensor `name` when the checkpoint's weights are quantized (declared, or a companion beside it)."""
        if self._declared is not None:
            raise InputError(f"{self._declared}: the {self.role}'s stored numbers are not its weights, and graft "
                             "never reads them as if they were; use the unquantized checkpoint (or dequantize it: "
                             "load it with transformers and save_pretrained)")
        companion = self.companion_of(name)
        if companion is not None:
            raise InputError(f"{self.checkpoint.tensors[name].file}: {self.role} tensor {name!r} would be {doing} "
                             f"but is quantized ({companion!r} beside it gives its stored numbers their meaning); "
                             "use the unquantized checkpoint (or dequantize it: load it with transformers and "
                             "save_pretrained)")

    def companion_of(self, name: str) -> str | None:
        """A quantization companion of tensor `name` (its scale, zero points, packing), if the checkpoint holds one."""
        module = _module(name)
        for other in self._by_module.get(module, ()):
            own = other[len(module) + 1:] if module else other
            if other != name and (_COMPANION.match(own) or other.startswith(name + ".")):
                return other
        return None


def _module(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def quantization_config_problem(checkpoint: Checkpoint) -> str | None:
    """config.json declaring quantized weights (top level or in a nested config), named with its method."""
    config = checkpoint.config
    for where, node in (("", config), *((f"{k}.", v) for k, v in config.items() if isinstance(v, dict))):
        quant = node.get("quantization_config")
        if quant is not None:
            method = quant.get("quant_method") if isinstance(quant, dict) else None
            how = f" ({method})" if isinstance(method, str) else ""
            return f"{checkpoint.root / 'config.json'}: {where}quantization_config{how} declares quantized weights"
    return None


__all__ = ["NUMERIC_TAGS", "REFUSED_FLOATS", "NumericReads", "dtype_problem", "quantization_config_problem"]
