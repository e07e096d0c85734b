"""Image-text processors: the folder's own (`AutoProcessor`) and, for Qwen2-VL / Qwen2.5-VL only, a stand-in.

transformers 5 builds `Qwen2VLProcessor` only with a video processor, which needs torchvision; CPU-only
installs often lack it (no CPU torchvision wheel for every torch build). The stand-in does exactly what the
processor does for images: the folder's image processor makes `pixel_values` and `image_grid_thw`, and each
`<|image_pad|>` in the text becomes grid.prod() // merge_size**2 copies. Everything else (tokenizer, chat
template, special tokens) comes from the folder, so inputs are the same token for token.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from graft.errors import IncompatibleError

QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")


class QwenVLImageTextProcessor:
    """Qwen2-VL image+text inputs without the video processor (see module docstring)."""

    def __init__(self, image_processor, tokenizer, chat_template: str | None):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"

    def apply_chat_template(self, conversation, **kwargs):
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, **kwargs)

    def __call__(self, text: list[str], images=None, padding=True, return_tensors="pt", **kwargs):
        out = {}
        text = list(text)
        if images:
            vision = self.image_processor(images=images, return_tensors="pt")
            out.update(vision)
            merge = self.image_processor.merge_size**2
            counts = (vision["image_grid_thw"].prod(-1) // merge).tolist()
            k = 0
            for i, t in enumerate(text):
                pieces = t.split(self.image_token)
                rebuilt = pieces[0]
                for piece in pieces[1:]:
                    rebuilt += "\x00" * counts[k] + piece  # placeholder so expanded tokens are not re-split
                    k += 1
                text[i] = rebuilt.replace("\x00", self.image_token)
            if k != len(counts):
                raise IncompatibleError(
                    f"the model's chat template rendered {k} {self.image_token!r} placeholders for {len(counts)} "
                    "images: it must render image content parts (as Qwen2-VL's own template does); fix "
                    "chat_template.jinja in the model folder"
                )
        enc = self.tokenizer(text, padding=padding, return_tensors=return_tensors, **kwargs)
        out.update(enc)
        # Modality of each position (0 text, 1 image), which Qwen2-VL's M-RoPE needs, as the processor returns.
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        out["mm_token_type_ids"] = (enc["input_ids"] == image_id).long()
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def load_processor(path: Path, config: dict, trust_remote_code: bool = False):
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (AttributeError, ImportError, TypeError, ValueError) as e:
        if config.get("model_type") not in QWEN_VL_TYPES:
            raise IncompatibleError(f"{path}: cannot load its processor ({str(e).splitlines()[0]})") from e
        warnings.warn(
            f"{path}: AutoProcessor failed ({type(e).__name__}; usually torchvision is missing); using graft's "
            "Qwen2-VL image-text stand-in (same image processor, tokenizer and token expansion)",
            stacklevel=2,
        )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    template = getattr(tokenizer, "chat_template", None)
    for name in ("chat_template.jinja", "chat_template.json"):
        f = path / name
        if f.is_file():
            raw = f.read_text(encoding="utf-8")
            template = json.loads(raw)["chat_template"] if name.endswith(".json") else raw
            break
    return QwenVLImageTextProcessor(image_processor, tokenizer, template)
