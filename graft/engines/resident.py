"""The resident graft: the engine under `graft search`. The target is loaded once; every search trial then sets
each grafted parameter to θ + λ·τ in place, with no disk I/O.

Why: a trial that wrote a merged checkpoint and reloaded it would spend tens of seconds on I/O for a 7B model; a
resident re-graft is one pass over memory (≈14 ms for 7B bf16 on an H100: docs/architecture.md), so trial time is
evaluation time.

What it guarantees: after `apply(c)` every parameter of the live model is bit-identical to the same tensor of
`from_pretrained(graft merge output)` for the recipe `recipe(c)`. That holds because the pieces are merge's own:

* the plan is `build_plan` on the recipe's target, vector, mapping rules and origin (so merge, search and inspect
  agree on which tensor gets which λ), and λ per trial is `Coefficients.layer_factors` + `Coefficients.lam`;
* the arithmetic is `ops.graft_rows` (fp32, one cast), λ = 0 copies the pristine tensor (as merge copies it);
* the operator (graft.core.operators) is merge's: its effective τ is computed once at load (and again by
  `set_operator`) by the same `prepare` over merge's own element chunks and the same `transform`.

Names: merge works on on-disk names, but transformers 5 renames keys when it loads (Qwen2-VL's `model.layers.N.*`
becomes `model.language_model.layers.N.*`, LLaVA's `language_model.model.*` becomes `model.language_model.*`) and
ties `lm_head` to the embedding. On-disk names are matched to parameter names by graft.core.mapping's matcher
(names and shapes, no per-family table), and every matched pair is verified byte for byte against the checkpoint.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from graft.core.arithmetic import graft_rows
from graft.core.dtypes import CAST_NAMES, torch_dtype_named
from graft.core.mapping import GROUPS, match_names
from graft.core.operators import Chunk, GraftOperator, OperatorSpec, TensorRef
from graft.core.recipe import Coefficients, Recipe
from graft.engines.merge import (
    chunk_elements,
    close_plan,
    default_chunk_bytes,
    grafted_elements,
    open_plan,
    tensor_chunks,
)
from graft.engines.plan import GraftPlan, TensorAction, build_plan
from graft.errors import IncompatibleError, UsageError
from graft.io.checkpoint import Checkpoint
from graft.io.devices import resolve_device
from graft.schema import parse_size

if TYPE_CHECKING:
    from graft.evals.generation import HFBackend


class ModelLoader(Protocol):
    """How the resident graft gets its live model: the caller's choice (`graft.evals.generation.HFBackend.load` for the
    search), so that the engines never import the evaluation layer. What it returns holds the model as `.model`."""

    def __call__(self, path: Path, *, device: str, dtype: str, batch_size: int | None,
                 text_only: bool) -> HFBackend: ...


_STORED_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
# Rows per step of `apply`, in bytes of the pristine tensor. On CPU, 2 MB keeps graft_rows' fp32 temporaries in
# cache (measured 2.2× the `torch.add` floor against 20–40× for whole tensors); on CUDA, large steps keep the
# kernel count low while bounding the temporaries of a 150k-row embedding.
APPLY_CHUNK_BYTES = {"cpu": 2 * 2**20, "cuda": 256 * 2**20}


@dataclass
class _Slot:
    """One grafted parameter: where to write, what to start from, what to add."""

    action: TensorAction  # on-disk name, donor, layer, group, rows
    param_name: str
    out: torch.Tensor  # the parameter's grafted rows: a view of its data, so writes land in the live model
    orig: torch.Tensor  # the pristine rows, in the target's stored dtype
    tau: torch.Tensor  # the operator's effective τ for those rows (τ as stored for linear, else fp32)
    step: int  # elements per chunk of the unfused `apply`

    @property
    def nbytes(self) -> int:
        return self.orig.nbytes + self.tau.nbytes


class ResidentGraft:
    """Target loaded once; pristine tensors and τ resident; each trial sets param = orig + λ·τ in place.

    Memory: besides the model, `resident_bytes` = the pristine copy and τ of every tensor a trial may graft, i.e.
    about two extra copies of the grafted tensors (three when τ is fp32 over a bf16 target, as with every
    operator but linear or a vector extracted with --dtype float32). A 7B bf16 model grafted everywhere: 13.5 GB of
    model plus 27 GB resident. `offload=True` keeps them in pinned host memory instead (CUDA only): the GPU then
    holds only the model, and each trial streams them over PCIe (≈0.5–1 s for 7B instead of ≈14 ms).

    Speed: `graft_rows` as merge runs it is five elementwise passes with fp32 temporaries (≈4× the `torch.add`
    floor on a CPU, with cache-sized chunks; ≈7× its memory traffic on a GPU). `fused=True` compiles that same function
    with torch.compile into one kernel per tensor (one read of θ and τ, one write): near the floor, bit-identical
    because inductor is told not to contract the multiply-add (see `_fused_step`). It needs a C++ compiler (CPU) or
    Triton (CUDA) and costs a compile on the first trial.

    The engine starts as the pristine target (every λ = 0) until the first `apply`.
    """

    def __init__(self, recipe: Recipe, plan: GraftPlan, engine: HFBackend, slots: list[_Slot], dtype_name: str,
                 num_layers: int, fused: bool = False, offload: bool = False):
        self._recipe = recipe
        self._offload = offload
        self._plan = plan
        self._engine: HFBackend | None = engine
        self._slots = slots
        self._dtype_name = dtype_name
        self._num_layers = num_layers
        self._step = _fused_step() if fused else None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_recipe(cls, recipe: Recipe, *, load: ModelLoader, device: str = "auto", dtype: str = "auto",
                    batch_size: int | None = None, text_only: bool = False, offload: bool = False,
                    fused: bool = False, chunk_bytes: int | None = None) -> ResidentGraft:
        """Load `recipe.target` with `load` (the search passes `HFBackend.load`) and make every tensor the recipe's
        vector can graft resident.

        dtype "auto" loads the model as the target is stored (or in `recipe.options.dtype` when set), so trial
        weights are bit-identical to `graft merge` output. Another dtype (e.g. float32 on a CPU, where bf16 matmuls
        are slow) loads the model in that dtype and each trial computes graft_rows(θ, τ, λ, that dtype) from the
        stored θ: the weights `graft merge` writes with options.dtype set to it, which is what `recipe()` returns.
        `text_only` loads no image processor (see `HFBackend.load`); `offload` and `fused`: see the class docstring;
        `chunk_bytes` is the step of the unfused `apply`.
        """
        plan = open_plan(recipe)
        try:
            # Every tensor some coefficients could graft (λ = 1 for every group, vision included): a trial may give
            # λ ≠ 0 to a group the recipe itself leaves at 0. Same matcher, rules and origin as the recipe's plan.
            every = recipe.model_copy(update={"coefficients": Coefficients(groups=dict.fromkeys(GROUPS, 1.0))})
            candidates = build_plan(plan.target, plan.vector, every, plan.origin)
            candidates.check()
            dev = resolve_device(device)
            if offload and dev.type != "cuda":
                raise UsageError("offload=True keeps the resident tensors in pinned host memory for a CUDA model; "
                                 "on the CPU they already live in host memory: drop offload")
            if offload and fused:
                raise UsageError("fused=True computes from resident tensors on the GPU; it cannot be combined with "
                                 "offload=True")
            dtype_name = _engine_dtype(plan.target, recipe, dtype)
            engine = _load_engine(load, plan.target, dev, dtype_name, batch_size, text_only)
            step_bytes = chunk_bytes or APPLY_CHUNK_BYTES["cuda" if dev.type == "cuda" else "cpu"]
            slots = _make_slots(candidates, engine.model, dev, offload, step_bytes)
        except BaseException:
            close_plan(plan)
            raise
        return cls(recipe, plan, engine, slots, dtype_name, plan.vector.manifest.num_layers, fused, offload)

    def set_operator(self, spec: OperatorSpec) -> None:
        """Graft with another operator from now on: every slot's effective τ is recomputed from the files (τ is
        re-read, so it costs one pass over the grafted tensors, not a reload of the model). An operator that uses
        the origin needs a resident loaded from a recipe whose operator used it too (the origin is then open)."""
        self._check_open()
        if spec == self._recipe.operator_spec:
            return
        operator = spec.build()
        if operator.uses_origin and self._plan.origin is None:
            raise UsageError(f"operator {spec.name} uses the origin, but this ResidentGraft was loaded without one; "
                             "load it from a recipe whose operator uses the origin")
        device = self.engine.device
        step = _merge_chunk_bytes(self._recipe)
        for slot in self._slots:
            slot.tau = _resident(_effective_tau(self._plan, slot.action, operator, step), torch.device(device),
                                 self._offload)
        self._recipe = self._recipe.with_operator(spec)

    @property
    def operator(self) -> OperatorSpec:
        """The operator the resident tensors hold the effective τ of."""
        return self._recipe.operator_spec

    # ------------------------------------------------------------------ trials
    def apply(self, coefficients: Coefficients) -> None:
        """Set every grafted parameter for these coefficients (λ per tensor exactly as `build_plan` computes it)."""
        self._check_open()
        factors = coefficients.layer_factors(self._num_layers)
        lams = [coefficients.lam(slot.action.layer, slot.action.group or "other", factors) for slot in self._slots]
        with torch.inference_mode():
            if self._step is None:
                for slot, lam in zip(self._slots, lams, strict=True):
                    _write(slot, lam)
                return
            import torch._inductor.config as inductor_config

            # λ as fp32 device scalars, sent in one transfer: the value graft_rows' `mul_(λ)` uses (fp32(λ)), and no
            # recompilation per trial (a Python float would be specialised into the kernel).
            device_lams = torch.tensor(lams, dtype=torch.float32, device=self.engine.device)
            with inductor_config.patch(emulate_precision_casts=True):
                for i, (slot, lam) in enumerate(zip(self._slots, lams, strict=True)):
                    if lam == 0.0:
                        slot.out.copy_(slot.orig)
                    else:
                        self._step(slot.out, slot.orig, slot.tau, device_lams[i])

    def recipe(self, coefficients: Coefficients) -> Recipe:
        """The recipe `graft merge` would run to write the weights `apply(coefficients)` sets."""
        options = self._recipe.options
        if options.dtype != "auto" or self._dtype_name != _stored_dtype_name(self._plan.target):
            options = options.model_copy(update={"dtype": self._dtype_name})
        return self._recipe.model_copy(update={"coefficients": coefficients, "options": options})

    # ------------------------------------------------------------------ views
    @property
    def engine(self) -> HFBackend:
        """The live model with its tokenizer/processor, for `graft.evals.evaluate`."""
        self._check_open()
        assert self._engine is not None
        return self._engine

    @property
    def plan(self) -> GraftPlan:
        """The recipe's plan, as `graft plan` and `graft merge` build it (layer and group of every tensor)."""
        return self._plan

    @property
    def dtype(self) -> torch.dtype:
        return torch_dtype_named(self._dtype_name)

    @property
    def param_names(self) -> dict[str, str]:
        """On-disk target name -> in-memory parameter name, for every resident tensor."""
        return {slot.action.target: slot.param_name for slot in self._slots}

    @property
    def resident_bytes(self) -> int:
        """Bytes held besides the model: the pristine rows and τ of every resident tensor."""
        return sum(slot.nbytes for slot in self._slots)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the resident tensors, the model and the open checkpoints."""
        if self._engine is None:
            return
        self._slots = []
        self._engine = None
        close_plan(self._plan)

    def __enter__(self) -> ResidentGraft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._engine is None:
            raise UsageError("this ResidentGraft is closed; build a new one with ResidentGraft.from_recipe")


def _fused_step() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]:
    """`out ← graft_rows(θ, τ, λ)` compiled into one kernel (dynamic shapes: one compile per rank and dtype).

    Bit-identical to the eager function because nothing is reassociated or contracted: inductor's C++ backend
    compiles with -ffp-contract=off by default, and `emulate_precision_casts` (set around every call in `apply`)
    turns Triton's fp fusion off on CUDA, so τ·λ and + θ stay two separately rounded fp32 operations.
    """

    def step(out: torch.Tensor, theta: torch.Tensor, tau: torch.Tensor, lam: torch.Tensor) -> None:
        out.copy_(graft_rows(theta, tau, lam, out.dtype))  # type: ignore[arg-type]  # a 0-d tensor works as λ

    return torch.compile(step, dynamic=True, fullgraph=True)


def _write(slot: _Slot, lam: float) -> None:
    """out = graft_rows(orig, τ, λ) in equal flat chunks; λ = 0 restores the pristine bytes (as merge copies them).

    graft_rows is elementwise, so chunks of the flattened tensors give the same bytes as whole tensors. Equal chunk
    sizes matter on the CPU: every trial then asks malloc for the same few buffer sizes, which it reuses; chunks of
    whole rows (sizes varying per tensor) made glibc return and re-fault the pages on every trial (8× slower).
    """
    out, orig, tau = slot.out.view(-1), slot.orig.view(-1), slot.tau.view(-1)
    if lam == 0.0:
        out.copy_(orig, non_blocking=True)
        return
    device = out.device
    for start in range(0, out.numel(), slot.step):
        stop = start + slot.step
        theta = orig[start:stop].to(device, non_blocking=True)  # no-op unless offloaded
        delta = tau[start:stop].to(device, non_blocking=True)
        out[start:stop].copy_(graft_rows(theta, delta, lam, out.dtype))


# -- loading ----------------------------------------------------------------------------------------------------
def _stored_dtype_name(target: Checkpoint) -> str:
    """The dtype holding most of the target's floating-point bytes (what `graft merge` writes by default)."""
    counts: Counter[str] = Counter()
    for info in target.tensors.values():
        if info.is_float:
            counts[info.dtype] += info.nbytes
    tag = counts.most_common(1)[0][0] if counts else "F32"
    return _STORED_NAMES.get(tag, tag)


def _engine_dtype(target: Checkpoint, recipe: Recipe, dtype: str) -> str:
    if dtype == "auto":
        name = recipe.options.dtype if recipe.options.dtype != "auto" else _stored_dtype_name(target)
        if name not in CAST_NAMES:
            raise IncompatibleError(f"{target.root}: weights are stored as {name}, which transformers cannot load "
                                    f"as is; pass dtype= one of {', '.join(CAST_NAMES)}")
        return name
    if dtype not in CAST_NAMES:
        raise UsageError(f"dtype {dtype!r}: expected auto, {', '.join(CAST_NAMES)}")
    return dtype


def _load_engine(load: ModelLoader, target: Checkpoint, device: torch.device, dtype_name: str,
                 batch_size: int | None, text_only: bool) -> HFBackend:
    try:
        return load(target.root, device=str(device), dtype=dtype_name, batch_size=batch_size, text_only=text_only)
    except IncompatibleError as exc:
        raise IncompatibleError(f"{exc}; the resident graft (graft search) needs a model transformers can load: "
                                "convert it to a transformers layout, or use `graft merge`") from exc


def parameter_names(target: Checkpoint, model: torch.nn.Module) -> dict[str, str]:
    """On-disk name -> in-memory parameter name, from names and shapes: graft.core.mapping's matcher, then same-name
    same-shape pairs for whatever it left. Only a guess until `_make_slots` has compared the bytes."""
    memory = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    disk = {name: info.shape for name, info in target.tensors.items()}
    match = match_names(disk, memory)
    names = {pair.donor: pair.target for pair in match.pairs if pair.rows is None}
    taken = set(names.values())
    for name, shape in disk.items():
        if name not in names and memory.get(name) == shape and name not in taken:
            names[name] = name
    return names


def _make_slots(candidates: GraftPlan, model: torch.nn.Module, device: torch.device, offload: bool,
                step_bytes: int) -> list[_Slot]:
    target = candidates.target
    names = parameter_names(target, model)
    grafted = candidates.grafted
    _untie_grafted(model, names, {a.target for a in grafted})
    params = dict(model.named_parameters(remove_duplicate=False))
    owner: dict[int, str] = {}
    merge_bytes = _merge_chunk_bytes(candidates.recipe)
    operator = candidates.operator
    slots = []
    for action in grafted:
        name = names.get(action.target)
        if name is None:
            raise IncompatibleError(
                f"{target.root}: tensor {action.target!r} matches no parameter of the loaded "
                f"{type(model).__name__} by name and shape; transformers renamed or dropped it"
            )
        param = params[name]
        if id(param) in owner:  # cannot happen after untying; guards against grafting one parameter twice
            raise IncompatibleError(f"{target.root}: tensors {owner[id(param)]!r} and {action.target!r} both load "
                                    f"into parameter {name!r}")
        owner[id(param)] = action.target
        info = target.tensors[action.target]
        stored = target.read(action.target)
        if not _same_bytes(param.data, stored.to(device).to(param.dtype)):
            raise IncompatibleError(
                f"{target.root}: tensor {action.target!r} was matched to parameter {name!r} of the loaded "
                f"{type(model).__name__} but their values differ; the name mapping is wrong for this layout "
                "(please report it)"
            )
        rows = action.rows if action.rows is not None else info.rows
        orig = stored[:rows].clone() if rows < info.rows else stored  # a grown vocabulary's new rows never change
        tau = _effective_tau(candidates, action, operator, merge_bytes)
        out = param.data[:rows] if param.dim() else param.data
        slots.append(_Slot(action, name, out, _resident(orig, device, offload), _resident(tau, device, offload),
                           max(1, step_bytes // info.itemsize)))
    return slots


def _merge_chunk_bytes(recipe: Recipe) -> int:
    """The element chunks `graft merge` would use for this recipe (the pre-pass reads the same ones)."""
    chunk = recipe.options.chunk_size
    return parse_size(chunk) if chunk else default_chunk_bytes(resolve_device(recipe.options.device))


def _effective_tau(plan: GraftPlan, action: TensorAction, operator: GraftOperator, merge_bytes: int) -> torch.Tensor:
    """The operator's effective τ of one tensor's grafted rows, as merge computes it chunk by chunk: the same
    pre-pass over merge's element chunks, then `transform` over flat ranges (elementwise, so any ranges give the
    same bytes; bounded ranges bound the temporaries)."""
    info = plan.target.tensors[action.target]
    elements = grafted_elements(action, info)
    step = chunk_elements(merge_bytes, info)
    tensor = TensorRef(action.donor or "", action.target, elements)
    state = operator.prepare(tensor, tensor_chunks(plan, action, elements, step))
    tau = plan.vector.checkpoint.read(action.donor or "").reshape(-1)[:elements]
    theta = origin = None
    if operator.uses_origin and plan.origin is not None and action.origin is not None:
        theta = plan.target.read(action.target).reshape(-1)[:elements]
        origin = plan.origin.read(action.origin).reshape(-1)[:elements]
    out: torch.Tensor | None = None
    for start in range(0, elements, step):
        stop = min(elements, start + step)
        piece = operator.transform(Chunk(start, tau[start:stop], None if theta is None else theta[start:stop],
                                         None if origin is None else origin[start:stop]), tensor, state)
        if out is None:
            out = torch.empty(elements, dtype=piece.dtype)
        out[start:stop] = piece
    assert out is not None
    rows = action.rows if action.rows is not None else info.rows
    return out.view(rows, *info.row_shape) if info.shape else out.view(())


def _resident(tensor: torch.Tensor, device: torch.device, offload: bool) -> torch.Tensor:
    if offload:
        return tensor.contiguous().pin_memory()
    return tensor.to(device).contiguous()


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _untie_grafted(model: torch.nn.Module, names: dict[str, str], grafted: set[str]) -> None:
    """Give its own parameter to every on-disk tensor that transformers tied to another one it also stores.

    transformers 5 ties e.g. `lm_head` to the embedding when a checkpoint stores both with equal values and unties
    them when they differ. Once one of them is grafted they differ, so the merged folder reloads untied: the
    resident model must hold them apart too. (A tensor stored once and tied in memory stays one parameter and is
    grafted once.)
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    stored_on: dict[int, list[str]] = defaultdict(list)
    for disk_name, param_name in names.items():
        stored_on[id(params[param_name])].append(disk_name)
    for disk_names in stored_on.values():
        if len(disk_names) < 2 or not grafted.intersection(disk_names):
            continue
        for disk_name in disk_names[1:]:
            param_name = names[disk_name]
            parent_name, _, attr = param_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            old = params[param_name]
            setattr(parent, attr, torch.nn.Parameter(old.detach().clone(), requires_grad=old.requires_grad))


__all__ = ["APPLY_CHUNK_BYTES", "ResidentGraft", "parameter_names"]
