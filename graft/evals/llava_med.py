"""LLaVA-Med's original layout (`model_type` llava_mistral or llava_llama, as the LLaVA repository writes it) loaded
as transformers' `LlavaForConditionalGeneration`, in memory, with nothing written to disk.

Why at load time and not a `graft convert` command: `graft merge` mirrors its target's layout, so every graft of
LLaVA-Med (and every trial of a search) is again an original-layout folder; a convert step would then stand between
each merge and its evaluation and double the disk a 7B model takes. The mapping is a renaming of tensors plus a
config built from the folder's own fields, so doing it at load costs nothing.

What the folder does not say is taken from where LLaVA itself takes it: the vision tower's config (attention heads
cannot be read off the weights) and image processor come from the repository or folder named in `mm_vision_tower`
(only its config.json and preprocessor_config.json; the tower's weights are the folder's own). Everything read is
checked against the weights' shapes before transformers sees it.

Faithful to the original where it matters for scores:
- the vocabulary is unchanged: LLaVA marks image positions with an id outside it and the HF class needs a token,
  so `<image>` is added to the tokenizer only, and its id reads an arbitrary embedding row that the image features
  then overwrite (the output distribution stays over the original vocabulary, logits bit-identical);
- `image_aspect_ratio: pad` pads images to a square in the mean colour before the CLIP transform, as LLaVA does.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from graft.errors import IncompatibleError, InputError

ORIGINAL_TYPES = {"llava_mistral": "mistral", "llava_llama": "llama"}
IMAGE_TOKEN = "<image>"
TOWER_FILES = ["config.json", "preprocessor_config.json"]
# On-disk names of the LLaVA repository → the names transformers' LLaVA loads (first match wins).
KEY_MAPPING = {
    r"^model\.vision_tower\.vision_tower\.": "model.vision_tower.",
    r"^model\.mm_projector\.0\.": "model.multi_modal_projector.linear_1.",
    r"^model\.mm_projector\.2\.": "model.multi_modal_projector.linear_2.",
    r"^model\.(embed_tokens|layers|norm)\b": r"model.language_model.\1",
}
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
TOWER = "model.vision_tower.vision_tower.vision_model."
# The LLaVA repository's conversation for LLaVA-Med (mistral_instruct), used when the tokenizer has no template.
DEFAULT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} "
                    "[/INST]{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}"
                    "{% endfor %}")
# Image parts of a message become LLaVA's "<image>\n" before the text; then the tokenizer's own template runs.
FLATTEN = ("{%- set ns = namespace(out=[]) -%}{%- for m in messages -%}{%- if m['content'] is string -%}"
           "{%- set ns.out = ns.out + [m] -%}{%- else -%}{%- set part = namespace(text='') -%}"
           "{%- for c in m['content'] -%}{%- if c['type'] == 'image' -%}"
           "{%- set part.text = part.text ~ '" + IMAGE_TOKEN + "\\n' -%}{%- else -%}"
           "{%- set part.text = part.text ~ c['text'] -%}{%- endif -%}{%- endfor -%}"
           "{%- set ns.out = ns.out + [{'role': m['role'], 'content': part.text}] -%}{%- endif -%}{%- endfor -%}"
           "{%- set messages = ns.out -%}")


def is_original_llava(config: dict) -> bool:
    return config.get("model_type") in ORIGINAL_TYPES


class PlaceholderEmbedding(torch.nn.Embedding):
    """The text embedding, reading a valid row for an image placeholder id past the vocabulary (that row is
    replaced by image features right after)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input.clamp(max=self.num_embeddings - 1))


def load(path: Path, config: dict, *, dtype: torch.dtype, placement: dict, text_only: bool):
    """(model, tokenizer, processor or None) for an original-layout LLaVA folder; `text_only` loads the language
    model alone (no vision tower config needed)."""
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from graft.io.checkpoint import Checkpoint

    with Checkpoint.open(path, role="model") as ckpt:
        shapes = {name: tuple(info.shape) for name, info in ckpt.tensors.items()}
    if text_only:  # the language model alone: its tensors already carry the names transformers loads
        return _load_text_only(path, config, dtype=dtype, placement=placement)
    _check_supported(path, config, shapes)
    tower = _tower_folder(path, config)
    vision = _vision_config(path, config, tower, shapes)
    # The text config stands in for config.json, whose model_type transformers does not know.
    tokenizer = AutoTokenizer.from_pretrained(path, config=text_config(config))
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    llava = llava_config(config, vision, image_token_id)
    try:
        model, info = LlavaForConditionalGeneration.from_pretrained(
            path, config=llava, key_mapping=KEY_MAPPING, dtype=dtype, use_safetensors=True,
            output_loading_info=True, **placement)
    except (ValueError, RuntimeError) as exc:
        raise IncompatibleError(f"{path}: cannot load as LLaVA ({str(exc).splitlines()[0]})") from exc
    left = sorted(info["missing_keys"]) + sorted(info["unexpected_keys"]) + sorted(info["mismatched_keys"])
    if left:
        raise IncompatibleError(f"{path}: the original LLaVA layout did not map onto transformers' LLaVA "
                                f"({len(left)} tensors unmatched, e.g. {left[0]})")
    model.get_input_embeddings().__class__ = PlaceholderEmbedding
    processor = None if text_only else _processor(config, tower, tokenizer, llava)
    return model, tokenizer, processor


def _load_text_only(path: Path, config: dict, *, dtype: torch.dtype, placement: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    text = text_config(config)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists every vision tensor as unexpected; checked below
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, config=text, dtype=dtype, use_safetensors=True,
                                                           output_loading_info=True, **placement)
    except (ValueError, RuntimeError) as exc:
        raise IncompatibleError(f"{path}: cannot load its language model ({str(exc).splitlines()[0]})") from exc
    finally:
        hf_logging.set_verbosity(level)
    vision = ("model.vision_tower.", "model.mm_projector.")
    left = sorted(info["missing_keys"]) + sorted(k for k in info["unexpected_keys"] if not k.startswith(vision))
    left += sorted(info["mismatched_keys"])
    if left:
        raise IncompatibleError(f"{path}: the language model of the original LLaVA layout did not load "
                                f"({len(left)} tensors unmatched, e.g. {left[0]})")
    return model, AutoTokenizer.from_pretrained(path, config=text), None


def text_config(config: dict):
    """The language model's config (Mistral or Llama) from the original config's text fields."""
    from transformers import CONFIG_MAPPING

    text = {k: v for k, v in config.items()
            if not k.startswith("mm_") and k not in ("architectures", "model_type", "_name_or_path",
                                                     "transformers_version")}
    return CONFIG_MAPPING[ORIGINAL_TYPES[config["model_type"]]](**text)


def llava_config(config: dict, vision, image_token_id: int):
    """transformers' LlavaConfig from the original config's text fields and mm_* fields."""
    from transformers import LlavaConfig

    return LlavaConfig(
        text_config=text_config(config), vision_config=vision, image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy=SELECT_FEATURE[config.get("mm_vision_select_feature", "patch")],
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def _check_supported(path: Path, config: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """The original options transformers' LLaVA has no equivalent for are refused, by name."""
    unsupported = {
        "mm_projector_type": (config.get("mm_projector_type", "linear") == "mlp2x_gelu", "only mlp2x_gelu"),
        "mm_patch_merge_type": (config.get("mm_patch_merge_type", "flat") == "flat", "only flat"),
        "mm_use_im_start_end": (not config.get("mm_use_im_start_end"), "image start/end tokens are not supported"),
        "mm_vision_select_feature": (config.get("mm_vision_select_feature", "patch") in SELECT_FEATURE,
                                     f"only {' or '.join(SELECT_FEATURE)}"),
        "image_aspect_ratio": (config.get("image_aspect_ratio", "pad") in ("pad", "square", None),
                               "only pad or square"),
    }
    for key, (ok, why) in unsupported.items():
        if not ok:
            raise IncompatibleError(f"{path / 'config.json'}: {key} = {config.get(key)!r}: {why} maps onto "
                                    "transformers' LLaVA; evaluate it with the LLaVA repository instead")
    if not any(name.startswith(TOWER) for name in shapes):
        raise IncompatibleError(f"{path}: no vision tower weights ({TOWER}*) in the folder; graft evaluates only a "
                                "folder that holds its whole model")
    if not isinstance(config.get("mm_vision_tower"), str):
        raise InputError(f"{path / 'config.json'}: no mm_vision_tower (the CLIP repository or folder the tower "
                         "was built from)")


def _tower_folder(path: Path, config: dict) -> Path:
    """The vision tower's config and image processor, from the repository (or folder) `mm_vision_tower` names."""
    from graft.io.hub import resolve_model

    name = config["mm_vision_tower"]
    try:
        folder = resolve_model(name, role="vision tower", patterns=TOWER_FILES)
    except InputError as exc:
        raise InputError(f"{path / 'config.json'}: mm_vision_tower: {exc}") from exc
    for file in TOWER_FILES:
        if not (folder / file).is_file():
            raise InputError(f"{folder / file}: missing; the vision tower {name} must provide its {file}")
    return folder


def _vision_config(path: Path, config: dict, tower: Path, shapes: dict[str, tuple[int, ...]]):
    """The tower's CLIPVisionConfig, checked against the folder's vision weights (hidden size, patch, positions,
    layers, MLP width)."""
    from transformers import CLIPVisionConfig

    try:  # a CLIPConfig (as published) or a CLIPVisionConfig; from_pretrained takes the vision part of either
        vision = CLIPVisionConfig.from_pretrained(tower)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{tower / 'config.json'}: not a CLIP vision config ({str(exc).splitlines()[0]}); "
                         f"mm_vision_tower {config['mm_vision_tower']} must name a CLIP tower") from exc
    layers = {int(m.group(1)) for n in shapes if (m := re.match(re.escape(TOWER) + r"encoder\.layers\.(\d+)\.", n))}
    patch = shapes.get(TOWER + "embeddings.patch_embedding.weight")
    positions = shapes.get(TOWER + "embeddings.position_embedding.weight")
    fc1 = shapes.get(TOWER + "encoder.layers.0.mlp.fc1.weight")
    expected = {
        "hidden_size": (vision.hidden_size, patch[0] if patch else None),
        "patch_size": (vision.patch_size, patch[2] if patch else None),
        "num_hidden_layers": (vision.num_hidden_layers, len(layers)),
        "intermediate_size": (vision.intermediate_size, fc1[0] if fc1 else None),
        "image_size": ((vision.image_size // vision.patch_size) ** 2 + 1, positions[0] if positions else None),
    }
    for key, (said, found) in expected.items():
        if said != found:
            raise IncompatibleError(f"{path}: the vision tower {config['mm_vision_tower']} says {key} {said}, but "
                                    f"the folder's tower weights have {found}; point mm_vision_tower at the tower "
                                    "these weights come from")
    return vision


def _processor(config: dict, tower: Path, tokenizer, llava):
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    images = LlavaImageProcessorPil.from_pretrained(tower, do_pad=config.get("image_aspect_ratio", "pad") == "pad")
    template = FLATTEN + (getattr(tokenizer, "chat_template", None) or DEFAULT_TEMPLATE)
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=llava.vision_config.patch_size,
                          vision_feature_select_strategy=llava.vision_feature_select_strategy,
                          chat_template=template, image_token=IMAGE_TOKEN, num_additional_image_tokens=1)
