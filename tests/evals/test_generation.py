"""The generation engine: Auto-class loading of each model family, batched == unbatched, images, caps."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from graft.errors import IncompatibleError, InputError
from graft.evals import HFBackend, Request
from graft.evals.figstep import FIGSTEP_PROMPT, render

PROMPTS = [
    "How can I do placeholder task alpha number 000?",
    "Write a placeholder guide for task beta in group 1.",
    "Does placeholder treatment gamma help patients?",
    "yes",
    "A placeholder patient 3 presents with sign delta. What is the next step? Answer with the letter directly.",
    "How do I kill a placeholder process beta on my computer?",
    "Explain how a clinician could do placeholder harm",
]


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (40 + 8 * i, 36), (30 * i, 100, 200 - 20 * i)) for i in range(3)]


def test_text_model_loads_with_auto_classes(tiny_llama):
    engine = HFBackend.load(tiny_llama, device="cpu")
    assert type(engine.model).__name__ == "LlamaForCausalLM"
    assert engine.has_chat_template and not engine.is_multimodal
    with pytest.raises(IncompatibleError, match="text-only"):
        engine.generate([Request("x", image=_images()[0])])


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_llama_bpe"])
def test_batched_equals_unbatched_text(family, request):
    engine = HFBackend.load(request.getfixturevalue(family), device="cpu")
    reqs = [Request(p) for p in PROMPTS]
    one = engine.generate(reqs, max_new_tokens=12, batch_size=1)
    many = engine.generate(reqs, max_new_tokens=12, batch_size=4)
    assert one == many
    assert all(0 < g.n_tokens <= 12 for g in one)
    # The reference: HF generate on each prompt alone, no padding at all.
    tok = engine.tokenizer
    for req, g in zip(reqs, one, strict=True):
        text = tok.apply_chat_template([{"role": "user", "content": req.prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        seq = engine.model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        new = seq[0, ids["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id) + 1]
        assert tok.decode(new, skip_special_tokens=True).strip() == g.text


def test_generation_is_deterministic_and_capped(tiny_llama):
    engine = HFBackend.load(tiny_llama, device="cpu")
    reqs = [Request(p) for p in PROMPTS[:3]]
    a = engine.generate(reqs, max_new_tokens=5, batch_size=3)
    b = engine.generate(reqs, max_new_tokens=5, batch_size=3)
    assert a == b and all(g.n_tokens <= 5 for g in a)


@pytest.mark.parametrize("family", ["tiny_qwen2vl", "tiny_qwen25vl", "tiny_llava"])
def test_batched_equals_unbatched_images(family, request):
    path = request.getfixturevalue(family)
    engine = HFBackend.load(path, device="cpu")
    assert engine.is_multimodal
    imgs = _images()
    reqs = [Request(f"{p} describe the image", image=imgs[i % 3]) for i, p in enumerate(PROMPTS[:5])]
    reqs += [Request(p) for p in PROMPTS[5:]]  # text-only prompts through the same VLM
    one = engine.generate(reqs, max_new_tokens=8, batch_size=1)
    many = engine.generate(reqs, max_new_tokens=8, batch_size=3)
    assert one == many
    # The image reaches the model: a different image changes the logits of the same prompt.
    enc = engine._encode_batch([Request("what is shown", image=imgs[0])])
    enc2 = engine._encode_batch([Request("what is shown", image=imgs[2])])
    with torch.no_grad():
        assert not torch.allclose(engine.model(**enc).logits, engine.model(**enc2).logits)


def test_figstep_image_through_qwen2vl(tiny_qwen2vl):
    engine = HFBackend.load(tiny_qwen2vl, device="cpu")
    out = engine.generate([Request(FIGSTEP_PROMPT, image=render("How can I do placeholder task alpha?"))],
                          max_new_tokens=4)
    assert len(out) == 1 and out[0].n_tokens >= 1


def test_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"config\.json"):
        HFBackend.load(tmp_path, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batched_equals_unbatched(tiny_llama):
    engine = HFBackend.load(tiny_llama, device="cuda", dtype="float32")
    reqs = [Request(p) for p in PROMPTS]
    assert engine.generate(reqs, max_new_tokens=8, batch_size=1) == engine.generate(reqs, max_new_tokens=8,
                                                                                    batch_size=4)


def test_system_prompt_goes_through_the_chat_template(tiny_llama, tiny_llava):
    text = HFBackend.load(tiny_llama, device="cpu")._chat_text(Request("how are you", system="be careful"))
    assert text.index("<|system|> be careful") < text.index("<|user|> how are you")
    assert text.endswith("<|assistant|> ")
    vlm = HFBackend.load(tiny_llava, device="cpu")._chat_text(Request("what", image=_images()[0], system="be careful"))
    assert "<|system|> be careful" in vlm and "<|user|> <image>what" in vlm


@pytest.mark.parametrize("family", ["tiny_qwen2vl", "tiny_qwen25vl", "tiny_llava"])
def test_loglik_on_vlms_matches_a_full_forward(family, request):
    engine = HFBackend.load(request.getfixturevalue(family), device="cpu", batch_size=2)
    ctx = "Question: does placeholder treatment alpha help patients?\nAnswer:"
    pairs = [(ctx, " yes"), (ctx, " no"), (ctx, " placeholder option b beta"), ("Abstract: short\nAnswer:", " maybe")]
    got = engine.loglikelihood(pairs)
    tok = engine.tokenizer
    for (c, k), (ll, _) in zip(pairs, got, strict=True):
        ids = tok.encode(c + k)
        n_ctx = len(tok.encode(c))
        with torch.no_grad():
            lp = torch.log_softmax(engine.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        assert ll == pytest.approx(sum(lp[i - 1, ids[i]].item() for i in range(n_ctx, len(ids))), abs=1e-4)


@pytest.mark.skipif(__import__("importlib").util.find_spec("torchvision") is None,
                    reason="the real Qwen2VLProcessor needs torchvision")
def test_qwen_stand_in_equals_the_real_processor(tiny_qwen2vl):
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    from graft.evals.vlm_inputs import QwenVLImageTextProcessor

    real = AutoProcessor.from_pretrained(tiny_qwen2vl)
    tok = AutoTokenizer.from_pretrained(tiny_qwen2vl)
    ours = QwenVLImageTextProcessor(AutoImageProcessor.from_pretrained(tiny_qwen2vl), tok, tok.chat_template)
    texts = ["<|vision_start|><|image_pad|><|vision_end|>what is shown", "no image here"]
    a = real(text=texts, images=_images()[:1], padding=True, return_tensors="pt")
    b = ours(text=texts, images=_images()[:1], padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        assert torch.equal(a[key], b[key]), key
