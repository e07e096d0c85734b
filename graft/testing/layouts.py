"""Tiny, real-architecture checkpoints in every on-disk layout graft must read and write.

The models are random but structurally faithful: the tensor *names* and *shapes* are exactly what the
real checkpoints (Llama/Qwen2/Mistral/Gemma3 text models, Qwen2-VL, Qwen2.5-VL, LLaVA, LLaVA-Med,
Gemma3, Mistral3) carry on disk, which is what the name-mapping in graft has to get right.

On-disk names were verified against transformers 5.23: ``save_pretrained`` still writes the legacy
names (``model.layers.*`` for Qwen2-VL, ``language_model.model.*`` for LLaVA/Gemma3/Mistral3) even
though the in-memory modules are ``model.language_model.*``.

All randomness comes from per-call ``torch.Generator`` objects, so identical arguments give
byte-identical folders.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

from graft.core.dtypes import TAG_OF_DTYPE
from graft.io.writer import OutputTensor, shard_names, split_into_shards, write_index
from graft.schema import parse_size

__all__ = [
    "LAYOUTS",
    "Layout",
    "TextSpec",
    "build_target",
    "build_text_pair",
    "load_state_dict_dir",
    "write_safetensors",
]


@dataclass(frozen=True)
class TextSpec:
    """Shape of the tiny text LM shared by the donor pair and the target's language backbone."""

    family: str = "llama"  # "llama" | "qwen2" | "mistral" | "gemma3" (the *text* architecture)
    vocab_size: int = 128
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        """Per-head width; explicit because Gemma3's default head_dim is not hidden/heads."""
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class Layout:
    """Where a checkpoint keeps its language model on disk, and how to reload it."""

    name: str
    text_families: tuple[str, ...]
    lm_prefix: str
    head_name: str | None
    vision_prefixes: tuple[str, ...]
    loadable: bool
    auto_class: str | None


_ALL_FAMILIES = ("llama", "qwen2", "mistral", "gemma3")
_LEGACY_VLM = ("language_model.model.", "language_model.lm_head.weight")

LAYOUTS: dict[str, Layout] = {
    lay.name: lay
    for lay in (
        Layout("causal", _ALL_FAMILIES, "model.", "lm_head.weight", (), True, "AutoModelForCausalLM"),
        Layout("qwen2_vl", ("qwen2",), "model.", "lm_head.weight", ("visual.",), True,
               "Qwen2VLForConditionalGeneration"),
        Layout("qwen2_5_vl", ("qwen2",), "model.", "lm_head.weight", ("visual.",), True,
               "Qwen2_5_VLForConditionalGeneration"),
        Layout("qwen2_vl_t5names", ("qwen2",), "model.language_model.", "lm_head.weight", ("model.visual.",),
               True, "Qwen2VLForConditionalGeneration"),
        Layout("llava", ("llama", "mistral"), *_LEGACY_VLM, ("vision_tower.", "multi_modal_projector."), True,
               "LlavaForConditionalGeneration"),
        Layout("llava_med", ("mistral",), "model.", "lm_head.weight",
               ("model.vision_tower.", "model.mm_projector."), False, None),
        Layout("gemma3", ("gemma3",), *_LEGACY_VLM, ("vision_tower.", "multi_modal_projector."), True,
               "Gemma3ForConditionalGeneration"),
        Layout("mistral3", ("mistral", "llama"), *_LEGACY_VLM, ("vision_tower.", "multi_modal_projector."),
               True, "Mistral3ForConditionalGeneration"),
    )
}

# transformers model_type of each text family (Gemma3's text-only model is "gemma3_text").
_FAMILY_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "mistral": "mistral", "gemma3": "gemma3_text"}
# Prefix of the LM body in transformers-5 *in-memory* names (causal LMs keep "model.").
_MEM_LM_PREFIX = "model.language_model."
_PAD, _BOS, _EOS = 0, 1, 2  # <unk> is id 3, see `_tokenizer`
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {{ eos_token }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


# --------------------------------------------------------------------------- randomness helpers


def _gen(seed: int) -> torch.Generator:
    """A private CPU generator: never touches (or depends on) the global RNG."""
    return torch.Generator().manual_seed(seed)


@contextmanager
def _no_global_rng() -> Iterator[None]:
    """Model construction draws from the global RNG; keep the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        yield


def _random_like(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Small random init; norm weights around 1 so the tiny models stay numerically sane."""
    noise = torch.randn(shape, generator=gen) * 0.02
    is_norm = name.endswith("weight") and ("norm" in name or ".ln" in name) and len(shape) == 1
    return noise + 1.0 if is_norm else noise


def _perturb(t: torch.Tensor, gen: torch.Generator, dtype: torch.dtype, scale: float = 0.01) -> torch.Tensor:
    """`t` (cast to `dtype`) plus a fresh random delta that survives rounding to `dtype` in *every* entry.

    Needed so task vectors are nonzero everywhere: in bf16 a 0.01 step vanishes next to a norm weight
    of ~1, so entries that would round back are nudged to the neighbouring representable value.
    """
    base = t.to(dtype)
    noise = torch.randn(t.shape, generator=gen) * scale
    out = (base.float() + noise).to(dtype)
    stuck = out == base
    away = torch.where(noise >= 0, torch.inf, -torch.inf).to(dtype)
    out[stuck] = torch.nextafter(base[stuck], away[stuck])
    return out


# --------------------------------------------------------------------------- safetensors I/O


def write_safetensors(state: dict[str, torch.Tensor], out_dir: Path,
                      max_shard_size: str | None = None) -> None:
    """Write `state` like `save_pretrained` does: one file, or shards + model.safetensors.index.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in sorted(state.items())}
    meta = {"format": "pt"}
    if max_shard_size is None:
        save_file(state, str(out_dir / "model.safetensors"), metadata=meta)
        return
    tensors = [OutputTensor(n, TAG_OF_DTYPE[t.dtype], tuple(t.shape)) for n, t in state.items()]
    groups = split_into_shards(tensors, parse_size(max_shard_size))
    weight_map: dict[str, str] = {}
    for fname, group in zip(shard_names("model", len(groups)), groups, strict=True):
        save_file({t.name: state[t.name] for t in group}, str(out_dir / fname), metadata=meta)
        weight_map.update(dict.fromkeys((t.name for t in group), fname))
    write_index(out_dir, "model.safetensors.index.json", weight_map, {"total_size": sum(t.nbytes for t in tensors)})


def load_state_dict_dir(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors folder, keyed by on-disk name."""
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            tensors.update({k: fh.get_tensor(k) for k in fh.keys()})  # noqa: SIM118 (safe_open is no dict)
    return tensors


# --------------------------------------------------------------------------- configs


def _text_kwargs(spec: TextSpec, vocab: int) -> dict:
    """Text-config fields shared by every family and by the text half of every VLM config."""
    return dict(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=256,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=_PAD,
        bos_token_id=_BOS,
        eos_token_id=_EOS,
    )


def _text_config(spec: TextSpec, vocab: int) -> transformers.PretrainedConfig:
    """Config of the plain causal LM of `spec.family`."""
    return transformers.AutoConfig.for_model(_FAMILY_MODEL_TYPE[spec.family], **_text_kwargs(spec, vocab))


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's (temporal, height, width) rotary split; must sum to head_dim / 2."""
    half = head_dim // 2
    hw = half * 3 // 8
    return [half - 2 * hw, hw, hw]


def _qwen_vl_text(spec: TextSpec, vocab: int) -> dict:
    return dict(_text_kwargs(spec, vocab),
                rope_scaling={"type": "mrope", "mrope_section": _mrope_section(spec.head_dim)})


def _qwen_vl_ids(vocab: int) -> dict:
    """Keep Qwen-VL's special token ids inside the tiny vocabulary (the image token is the last id)."""
    return {"image_token_id": vocab - 1, "video_token_id": vocab - 2, "vision_start_token_id": vocab - 4,
            "vision_end_token_id": vocab - 3}


def _clip_vision(hidden: int) -> transformers.CLIPVisionConfig:
    return transformers.CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden,
                                         num_hidden_layers=1, num_attention_heads=4, image_size=8,
                                         patch_size=4, projection_dim=hidden)


def _cfg_qwen2_vl(spec: TextSpec, vocab: int) -> transformers.PretrainedConfig:
    vision = dict(depth=1, embed_dim=16, hidden_size=spec.hidden_size, num_heads=2, patch_size=2,
                  in_channels=3, spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2)
    return transformers.Qwen2VLConfig(text_config=_qwen_vl_text(spec, vocab), vision_config=vision,
                                      tie_word_embeddings=spec.tie_word_embeddings, **_qwen_vl_ids(vocab))


def _cfg_qwen2_5_vl(spec: TextSpec, vocab: int) -> transformers.PretrainedConfig:
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, out_hidden_size=spec.hidden_size,
                  num_heads=2, patch_size=2, in_channels=3, spatial_merge_size=2, temporal_patch_size=2,
                  fullatt_block_indexes=[0], window_size=8)
    return transformers.Qwen2_5_VLConfig(text_config=_qwen_vl_text(spec, vocab), vision_config=vision,
                                         tie_word_embeddings=spec.tie_word_embeddings, **_qwen_vl_ids(vocab))


def _cfg_llava(spec: TextSpec, vocab: int) -> transformers.PretrainedConfig:
    return transformers.LlavaConfig(text_config=_text_config(spec, vocab), vision_config=_clip_vision(16),
                                    image_token_index=vocab - 1, tie_word_embeddings=spec.tie_word_embeddings)


def _cfg_gemma3(spec: TextSpec, vocab: int) -> transformers.PretrainedConfig:
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=8, patch_size=4)
    return transformers.Gemma3Config(text_config=_text_config(spec, vocab), vision_config=vision,
                                     mm_tokens_per_image=4, image_token_index=vocab - 1,
                                     boi_token_index=vocab - 3, eoi_token_index=vocab - 2,
                                     tie_word_embeddings=spec.tie_word_embeddings)


def _cfg_mistral3(spec: TextSpec, vocab: int) -> transformers.PretrainedConfig:
    vision = transformers.PixtralVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, head_dim=8, image_size=8, patch_size=4)
    return transformers.Mistral3Config(text_config=_text_config(spec, vocab), vision_config=vision,
                                       image_token_index=vocab - 1, spatial_merge_size=2,
                                       tie_word_embeddings=spec.tie_word_embeddings)


# Per-layout recipe for the loadable layouts: (config builder, model class name, image processor class).
# Image processors: the *Pil variants, because the default ones want torchvision (not installed).
_RECIPES: dict[str, tuple[Callable[[TextSpec, int], transformers.PretrainedConfig], str, str | None]] = {
    "causal": (_text_config, "AutoModelForCausalLM", None),
    "qwen2_vl": (_cfg_qwen2_vl, "Qwen2VLForConditionalGeneration", "Qwen2VLImageProcessorPil"),
    "qwen2_5_vl": (_cfg_qwen2_5_vl, "Qwen2_5_VLForConditionalGeneration", "Qwen2VLImageProcessorPil"),
    "qwen2_vl_t5names": (_cfg_qwen2_vl, "Qwen2VLForConditionalGeneration", "Qwen2VLImageProcessorPil"),
    "llava": (_cfg_llava, "LlavaForConditionalGeneration", "CLIPImageProcessorPil"),
    "gemma3": (_cfg_gemma3, "Gemma3ForConditionalGeneration", "Gemma3ImageProcessorPil"),
    "mistral3": (_cfg_mistral3, "Mistral3ForConditionalGeneration", "PixtralImageProcessorPil"),
}


# --------------------------------------------------------------------------- tokenizer & side files


def _tokenizer(vocab: int) -> transformers.PreTrainedTokenizerFast:
    """Word-level tokenizer with exactly `vocab` ids; the last one is the image placeholder."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = [f"w{i}" for i in range(vocab - len(specials) - 1)]
    tokens = [*specials, *words, "<image>"]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=["<image>"], chat_template=_CHAT_TEMPLATE, model_max_length=256)


def _save_side_files(out_dir: Path, vocab: int, processor: str | None) -> None:
    """Tokenizer and (for VLMs) image processor, so the folder looks like a real release."""
    _tokenizer(vocab).save_pretrained(out_dir)
    if processor is not None:
        getattr(transformers, processor)().save_pretrained(out_dir)


def _generation_config() -> transformers.GenerationConfig:
    return transformers.GenerationConfig(bos_token_id=_BOS, eos_token_id=_EOS, pad_token_id=_PAD)


def _save_generation_config(model: transformers.PreTrainedModel, out_dir: Path) -> None:
    if model.can_generate():
        _generation_config().save_pretrained(out_dir)


# --------------------------------------------------------------------------- model filling


def _instantiate(class_name: str, config: transformers.PretrainedConfig) -> transformers.PreTrainedModel:
    """Build a model from config without disturbing the global RNG (its init is overwritten anyway)."""
    cls = getattr(transformers, class_name)
    with _no_global_rng():
        model = cls.from_config(config) if class_name.startswith("Auto") else cls(config)
    return model.eval()


@torch.no_grad()
def _fill(model: torch.nn.Module, value: Callable[[str, torch.Tensor], torch.Tensor],
          dtype: torch.dtype) -> None:
    """Overwrite every (deduplicated, so tied-once) parameter with `value(name, param)`, then cast."""
    for name, p in model.named_parameters():
        p.copy_(value(name, p))
    model.to(dtype)


def _random_model(model: torch.nn.Module, gen: torch.Generator, dtype: torch.dtype) -> None:
    _fill(model, lambda n, p: _random_like(n, p.shape, gen), dtype)


def _save_model(model: transformers.PreTrainedModel, out_dir: Path, max_shard_size: str | None) -> None:
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out_dir, **kwargs)


# --------------------------------------------------------------------------- text pair


def build_text_pair(out_dir: Path, spec: TextSpec = TextSpec(), *, dtype: torch.dtype = torch.bfloat16,
                    seed: int = 0, max_shard_size: str | None = None) -> tuple[Path, Path]:
    """Write out_dir/"base" and out_dir/"aligned" (plain *ForCausalLM of spec.family).

    aligned = base + a small random perturbation of every tensor, so τ = aligned − base is nonzero
    everywhere. Returns (base, aligned).
    """
    out_dir = Path(out_dir)
    gen = _gen(seed)
    model = _instantiate("AutoModelForCausalLM", _text_config(spec, spec.vocab_size))
    paths = out_dir / "base", out_dir / "aligned"
    _random_model(model, gen, dtype)
    for i, path in enumerate(paths):
        if i:  # aligned: perturb the (already dtype-rounded) base
            _fill(model, lambda _n, p: _perturb(p, gen, dtype), dtype)
        _save_model(model, path, max_shard_size)
        _save_generation_config(model, path)
        _save_side_files(path, spec.vocab_size, None)
    return paths


# --------------------------------------------------------------------------- targets


def _donor_lm(donor_dir: Path, dtype: torch.dtype, gen: torch.Generator | None,
              extra_vocab: int = 0) -> dict[str, torch.Tensor]:
    """Donor LM tensors (causal names), optionally "fine-tuned" (perturbed) and with grown vocab.

    The donor's on-disk names of a plain causal LM are `model.*` + `lm_head.weight`; a tied donor gets an
    explicit head so targets with their own head still inherit the donor's values.
    """
    lm = {k: v.to(dtype) for k, v in load_state_dict_dir(donor_dir).items()}
    lm.setdefault("lm_head.weight", lm["model.embed_tokens.weight"].clone())
    if gen is not None:
        lm = {k: _perturb(v, gen, dtype) for k, v in sorted(lm.items())}
    if gen is not None and extra_vocab:
        for k in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = (torch.randn(extra_vocab, lm[k].shape[1], generator=gen) * 0.02).to(dtype)
            lm[k] = torch.cat([lm[k], rows])
    return lm


def _mem_to_donor(name: str, lm_prefix_mem: str) -> str | None:
    """In-memory parameter name → donor (causal) name, or None for non-LM (vision/projector) params."""
    if name == "lm_head.weight":
        return name
    if name.startswith(lm_prefix_mem):
        return "model." + name[len(lm_prefix_mem):]
    return None


def _compose(model: transformers.PreTrainedModel, lm: dict[str, torch.Tensor], vision_gen: torch.Generator,
             dtype: torch.dtype) -> None:
    """LM params from `lm`, everything else random from `vision_gen` (same order ⇒ same vision weights)."""
    mem_prefix = "model." if not hasattr(model.model, "language_model") else _MEM_LM_PREFIX

    def value(name: str, p: torch.Tensor) -> torch.Tensor:
        src = _mem_to_donor(name, mem_prefix)
        if src is None:
            return _random_like(name, p.shape, vision_gen)
        if lm[src].shape != p.shape:
            raise ValueError(f"{name}: donor {tuple(lm[src].shape)} vs target {tuple(p.shape)}")
        return lm[src]

    _fill(model, value, dtype)


def _write_loadable(layout: str, out_dir: Path, spec: TextSpec, lm: dict[str, torch.Tensor], seed: int,
                    dtype: torch.dtype, max_shard_size: str | None) -> None:
    """Build the transformers model of `layout`, fill it, and save it (legacy or in-memory names)."""
    make_config, class_name, processor = _RECIPES[layout]
    vocab = lm["model.embed_tokens.weight"].shape[0]
    model = _instantiate(class_name, make_config(spec, vocab))
    _compose(model, lm, _gen(seed), dtype)
    if layout == "qwen2_vl_t5names":
        state = model.state_dict()
        if spec.tie_word_embeddings:
            state.pop("lm_head.weight")
        write_safetensors(state, out_dir, max_shard_size)
        model.config.save_pretrained(out_dir)
    else:
        _save_model(model, out_dir, max_shard_size)
    _save_generation_config(model, out_dir)
    _save_side_files(out_dir, vocab, processor)


def _llava_med_config(spec: TextSpec, vocab: int) -> dict:
    """LLaVA-repo config (llava-med-v1.5-mistral-7b style): Mistral text fields + mm_* fields."""
    cfg = _text_config(spec, vocab).to_dict()
    for k in ("transformers_version", "architectures", "model_type", "dtype", "torch_dtype"):
        cfg.pop(k, None)
    cfg.update(
        architectures=["LlavaMistralForCausalLM"], model_type="llava_mistral", torch_dtype="bfloat16",
        mm_vision_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=spec.hidden_size,
        mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        mm_patch_merge_type="flat", mm_use_im_start_end=False, mm_use_im_patch_token=False,
        mm_projector_lr=None, mm_resampler_type=None, image_aspect_ratio="pad",
        tokenizer_model_max_length=256, tokenizer_padding_side="right", tune_mm_mlp_adapter=False,
        freeze_mm_mlp_adapter=False, unfreeze_mm_vision_tower=False, use_mm_proj=True, use_cache=True,
    )
    return cfg


def _llava_med_vision(spec: TextSpec, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """CLIP tower + 2-layer projector under LLaVA-repo names.

    The CLIP hidden size equals the LM hidden size on purpose: `...vision_model.encoder.layers.0.self_attn.
    q_proj.weight` then has the same shape as `model.layers.0.self_attn.q_proj.weight`, a trap for any
    name-mapping that matches tensors by suffix and shape.
    """
    clip = _instantiate("CLIPVisionModel", _clip_vision(spec.hidden_size))
    _random_model(clip, gen, torch.float32)
    tower = "model.vision_tower.vision_tower.vision_model."
    out = {tower + k.removeprefix("vision_model."): v for k, v in clip.state_dict().items()
           if not k.endswith("position_ids")}
    h = spec.hidden_size
    for name, shape in (("0.weight", (h, h)), ("0.bias", (h,)), ("2.weight", (h, h)), ("2.bias", (h,))):
        out["model.mm_projector." + name] = _random_like(name, torch.Size(shape), gen)
    return out


def _write_llava_med(out_dir: Path, spec: TextSpec, lm: dict[str, torch.Tensor], seed: int,
                     dtype: torch.dtype, max_shard_size: str | None) -> None:
    """LLaVA-Med's original (non-transformers) format, written by hand."""
    vocab = lm["model.embed_tokens.weight"].shape[0]
    state = dict(lm)
    if spec.tie_word_embeddings:
        state.pop("lm_head.weight")
    state.update(_llava_med_vision(spec, _gen(seed)))
    write_safetensors({k: v.to(dtype) for k, v in state.items()}, out_dir, max_shard_size)
    (out_dir / "config.json").write_text(json.dumps(_llava_med_config(spec, vocab), indent=2, sort_keys=True)
                                         + "\n")
    _generation_config().save_pretrained(out_dir)
    # LLaVA-Med ships no HF image processor (it borrows CLIP's); a CLIP one keeps tools looking for it happy.
    _save_side_files(out_dir, vocab, "CLIPImageProcessorPil")


def _write_layout(layout: str, out_dir: Path, spec: TextSpec, lm: dict[str, torch.Tensor], seed: int,
                  dtype: torch.dtype, max_shard_size: str | None) -> None:
    """Dispatch: LLaVA-Med is written by hand, everything else through transformers."""
    if layout == "llava_med":
        _write_llava_med(out_dir, spec, lm, seed, dtype, max_shard_size)
    else:
        _write_loadable(layout, out_dir, spec, lm, seed, dtype, max_shard_size)


def build_target(layout: str, out_dir: Path, donor_dir: Path, spec: TextSpec = TextSpec(), *,
                 dtype: torch.dtype = torch.bfloat16, seed: int = 1, max_shard_size: str | None = None,
                 extra_vocab: int = 0, with_origin: bool = False) -> Path | tuple[Path, Path]:
    """Write a "medical fine-tune" checkpoint in `layout` grown from the donor's LM.

    LM = donor (usually the aligned model) + a random perturbation, with `extra_vocab` new rows appended to
    embedding and head; vision tower/projector random from `seed`. with_origin=True also writes
    out_dir/"origin": same layout and the *same* vision weights but the unperturbed donor LM and the donor's
    vocabulary (the general model the medical one was fine-tuned from); then returns (origin, target) with
    the target in out_dir/"target" (always its location).
    """
    lay = LAYOUTS[layout]
    if spec.family not in lay.text_families:
        raise ValueError(f"layout {layout!r} supports text families {lay.text_families}, not {spec.family!r}")
    out_dir = Path(out_dir)
    target_dir = out_dir / "target"
    tuned = _donor_lm(Path(donor_dir), dtype, _gen(seed + 7919), extra_vocab)
    _write_layout(layout, target_dir, spec, tuned, seed, dtype, max_shard_size)
    if not with_origin:
        return target_dir
    origin_dir = out_dir / "origin"
    general = _donor_lm(Path(donor_dir), dtype, None)
    _write_layout(layout, origin_dir, spec, general, seed, dtype, max_shard_size)
    return origin_dir, target_dir
