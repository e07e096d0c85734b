"""Tiny random models for the evaluation tests, saved as real Hugging Face folders (session-scoped).

A word-level tokenizer over the fixtures' vocabulary with a chat template, a 2-layer Llama (hidden 32), tiny
Qwen2-VL, Qwen2.5-VL and HF LLaVA models, plus two constant "guard" models that always answer "safe" / "unsafe".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from graft.evals.answers import VQA_SUFFIX
from graft.evals.config import FIXTURES
from graft.evals.figstep import FIGSTEP_PROMPT
from graft.evals.judges import REFUSAL_PHRASES

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>",
           "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<image>"]
EXTRA_WORDS = ("safe unsafe sure here is how yes no maybe a b c d e answer question abstract context the option "
               "letter from given choices directly with or single word phrase using steps to")

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}IMAGE_TOKEN{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    " <|end|> {% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def _vocab() -> list[str]:
    text = " ".join(p.read_text(encoding="utf-8", errors="ignore") for p in FIXTURES.rglob("*")
                    if p.suffix in (".json", ".csv", ".jsonl"))
    text += " " + FIGSTEP_PROMPT + " " + " ".join(REFUSAL_PHRASES) + " " + EXTRA_WORDS + " " + VQA_SUFFIX
    text += " is there a placeholder finding organ enlarged what shown where lesion this an axial image modality used"
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", text.lower())))
    return SPECIAL + [w for w in words if w not in SPECIAL]


def make_tokenizer(image_token: str | None = None):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_vocab())}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", vocab["<s>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=SPECIAL[4:])
    tok.chat_template = CHAT_TEMPLATE.replace("IMAGE_TOKEN", image_token or "")
    return tok


def make_bpe_tokenizer():
    """A byte-level BPE (GPT-2 style: a space belongs to the next token), trained on the fixtures in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = [line for p in sorted(FIXTURES.rglob("*")) if p.suffix in (".json", ".csv", ".jsonl")
             for line in p.read_text(encoding="utf-8").splitlines()]
    lines += [FIGSTEP_PROMPT, " ".join(REFUSAL_PHRASES), EXTRA_WORDS, "Abstract: Question: Answer: yes no maybe"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = SPECIAL[:7]
    tk.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=specials[4:])
    tok.chat_template = CHAT_TEMPLATE.replace("IMAGE_TOKEN", "")
    return tok


def _llama_config(tok, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **kw)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from transformers import LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(1234)  # seed for the text model's random weights
    model = LlamaForCausalLM(_llama_config(tok))
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_bpe(tmp_path_factory) -> Path:
    from transformers import LlamaForCausalLM

    tok = make_bpe_tokenizer()
    torch.manual_seed(5678)  # seed for the BPE text model's random weights
    model = LlamaForCausalLM(_llama_config(tok))
    path = tmp_path_factory.mktemp("tiny_llama_bpe")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _constant_guard(tok, word: str, path: Path) -> Path:
    """A Llama whose every next token is `word`: attention and MLP outputs zeroed, all embeddings equal."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_config(tok))
    with torch.no_grad():
        c = torch.linspace(0.5, 1.5, 32)
        model.model.embed_tokens.weight[:] = c
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.convert_tokens_to_ids(word)] = c
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def guards(tmp_path_factory) -> dict[str, Path]:
    tok = make_tokenizer()
    return {w: _constant_guard(tok, w, tmp_path_factory.mktemp(f"guard_{w}")) for w in ("safe", "unsafe")}


def _qwen_vl(tmp_path_factory, family: str) -> Path:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    tok = make_tokenizer("<|vision_start|><|image_pad|><|vision_end|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")}
    text = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id, "tie_word_embeddings": False}
    common = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    if family == "qwen2_vl":
        config_cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        vision = {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2, **common}
    else:  # qwen2_5_vl: windowed attention blocks plus one full-attention block
        config_cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        vision = {"depth": 2, "hidden_size": 32, "out_hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                  "window_size": 56, "fullatt_block_indexes": [1], **common}
    config = config_cls(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], video_token_id=tok.unk_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(2345 if family == "qwen2_vl" else 4567)  # seed for this model's random weights
    model = model_cls(config)
    # Saved as parts (image processor, tokenizer with its chat template), as Qwen2VLProcessor cannot be built
    # without torchvision in transformers 5; a real Qwen2-VL folder holds the same files.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14,
                                               merge_size=2, temporal_patch_size=2)
    path = tmp_path_factory.mktemp(f"tiny_{family}")
    model.save_pretrained(path)
    image_processor.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen2vl(tmp_path_factory) -> Path:
    return _qwen_vl(tmp_path_factory, "qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen25vl(tmp_path_factory) -> Path:
    return _qwen_vl(tmp_path_factory, "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = make_tokenizer("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=_llama_config(tok).to_dict(),
                         image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(3456)  # seed for the LLaVA model's random weights
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=tok.chat_template)
    path = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
