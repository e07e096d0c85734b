"""`graft eval` on LLaVA-Med's original layout (llava_mistral): the folder is mapped onto transformers' LLaVA at load.

The reference is converted independently, by hand: the weights renamed into a `LlavaForConditionalGeneration`
built from an explicit config, saved with `save_pretrained`, and loaded back through the ordinary HF LLaVA path.
Both must hold the same parameters, give the same logits on text and image prompts, and score the same.
The vision tower's repository (`mm_vision_tower`) is a folder in a private, offline HF cache: nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from graft.evals import evaluate
from graft.evals.config import FIXTURES
from graft.evals.generation import HFBackend, Request
from graft.testing.layouts import TextSpec, build_target, build_text_pair
from tests.test_hub import _cache_repo, offline  # noqa: F401  (offline: autouse, no network here)

TOWER_REPO = "openai/clip-vit-large-patch14-336"  # what the layout's config.json names
TOWER = "model.vision_tower.vision_tower.vision_model."
SPEC = TextSpec(family="mistral")
# The fixture tokenizer's template with LLaVA's image placement ("<image>\n" before the text), written out by hand.
REFERENCE_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {{ eos_token }} {% endfor %}{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(scope="module")
def med(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("llava-med")
    _, aligned = build_text_pair(root / "pair", SPEC)
    target = build_target("llava_med", root / "med", aligned, SPEC, extra_vocab=2)
    # The tower repository as published: a CLIPConfig (its vision part matching the folder's tower weights) and
    # a CLIP image processor sized for it.
    tower = root / "tower"
    vision = transformers.CLIPVisionConfig(hidden_size=SPEC.hidden_size, intermediate_size=2 * SPEC.hidden_size,
                                           num_hidden_layers=1, num_attention_heads=4, image_size=8, patch_size=4,
                                           projection_dim=SPEC.hidden_size)
    transformers.CLIPConfig(vision_config=vision.to_dict(), text_config={}).save_pretrained(tower)
    transformers.CLIPImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}).save_pretrained(
        tower)
    reference = convert_by_hand(target, vision, root / "reference")
    return SimpleNamespace(target=target, tower=tower, vision=vision, reference=reference, root=root)


def convert_by_hand(src: Path, vision: transformers.CLIPVisionConfig, out: Path) -> Path:
    config = json.loads((src / "config.json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    text = transformers.MistralConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"], num_key_value_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"], rms_norm_eps=config["rms_norm_eps"],
        max_position_embeddings=config["max_position_embeddings"], sliding_window=config["sliding_window"],
        rope_parameters=config["rope_parameters"], tie_word_embeddings=False,
        bos_token_id=config["bos_token_id"], eos_token_id=config["eos_token_id"], pad_token_id=config["pad_token_id"])
    llava = transformers.LlavaConfig(
        text_config=text, vision_config=vision, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu", vision_feature_layer=config["mm_vision_select_layer"],
        vision_feature_select_strategy="default", image_seq_length=4)
    model = transformers.LlavaForConditionalGeneration(llava)
    state = {}
    for name, tensor in load_file(src / "model.safetensors").items():
        if name.startswith(TOWER):
            state["model.vision_tower." + name[len(TOWER):]] = tensor
        elif name.startswith("model.mm_projector."):
            layer, what = name[len("model.mm_projector."):].split(".")
            state[f"model.multi_modal_projector.linear_{ {'0': 1, '2': 2}[layer]}.{what}"] = tensor
        elif name.startswith("model."):
            state["model.language_model." + name[len("model."):]] = tensor
        else:
            state[name] = tensor
    model.load_state_dict(state, strict=True)
    model.to(torch.bfloat16).save_pretrained(out)
    images = transformers.LlavaImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8},
                                                 do_pad=True)
    processor = transformers.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=4,
                                            vision_feature_select_strategy="default", image_token="<image>",
                                            num_additional_image_tokens=1, chat_template=REFERENCE_TEMPLATE)
    processor.save_pretrained(out)
    shutil.copy(src / "generation_config.json", out / "generation_config.json")
    return out


@pytest.fixture
def tower_on_hub(med: SimpleNamespace, offline: Path) -> Path:  # noqa: F811
    return _cache_repo(offline, TOWER_REPO, med.tower)


def prompts() -> list[Request]:
    image = Image.new("RGB", (12, 7), (180, 40, 90))
    image.putpixel((3, 2), (0, 255, 0))
    return [Request(prompt="what organ is shown in this image", image=image),
            Request(prompt="is there a lesion", image=Image.new("RGB", (9, 16), (10, 200, 30))),
            Request(prompt="what is the answer")]


def test_loads_as_the_independently_converted_llava(med: SimpleNamespace, tower_on_hub: Path) -> None:
    ours = HFBackend.load(med.target, dtype="float32")
    ref = HFBackend.load(med.reference, dtype="float32")
    assert type(ours.model) is type(ref.model) is transformers.LlavaForConditionalGeneration
    assert ours.is_multimodal and ref.is_multimodal
    theirs = ref.model.state_dict()
    mine = ours.model.state_dict()
    assert mine.keys() == theirs.keys()
    for name, tensor in mine.items():
        assert torch.equal(tensor, theirs[name]), name
    # the tokenizer's vocabulary and the model's are unchanged: no row added to embed or head
    assert ours.model.get_output_embeddings().weight.shape[0] == json.loads(
        (med.target / "config.json").read_text())["vocab_size"]
    with torch.inference_mode():
        for batch in (prompts()[:2], prompts()[2:]):  # image-text, then text alone
            a, b = ours._encode_batch(batch), ref._encode_batch(batch)
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), key
            assert torch.equal(ours.model(**a).logits, ref.model(**b).logits)


def test_eval_scores_equal_the_converted_model(med: SimpleNamespace, tower_on_hub: Path, tmp_path: Path) -> None:
    kwargs = dict(tasks=["pubmedqa", "vqarad", "catqa"], data=FIXTURES / "data.yaml", limit=4, max_new_tokens=6,
                  dtype="float32")
    ours = evaluate(med.target, **kwargs)
    ref = evaluate(med.reference, **kwargs)
    assert set(ours.benchmarks) == {"pubmedqa", "vqarad", "catqa"} and not ours.skipped
    for task in ours.benchmarks:
        assert ours.score(task) == ref.score(task), task
    strip = ("latency_s",)
    assert [{k: v for k, v in s.items() if k not in strip} for s in ours.samples] == [
        {k: v for k, v in s.items() if k not in strip} for s in ref.samples]
    assert ours.model["class"] == "LlavaForConditionalGeneration" and ours.model["multimodal"]


def _variant(med: SimpleNamespace, tmp_path: Path, **changes: object) -> Path:
    folder = tmp_path / "variant"
    shutil.copytree(med.target, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def run_eval(model: Path, tmp_path: Path):
    from graft.cli import app

    return CliRunner().invoke(app, ["eval", str(model), "--data", str(FIXTURES / "data.yaml"), "--tasks", "vqarad",
                                    "--limit", "1", "--out", str(tmp_path / "r.json")])


@pytest.mark.parametrize(
    ("changes", "code", "words"),
    [({"mm_projector_type": "linear"}, 4, ["mm_projector_type", "only mlp2x_gelu"]),
     ({"mm_use_im_start_end": True}, 4, ["mm_use_im_start_end"]),
     ({"mm_vision_tower": "org/other-tower"}, 3, ["mm_vision_tower", "org/other-tower"]),
     ({"mm_vision_tower": "./towers/missing"}, 3, ["mm_vision_tower", "no such vision tower folder"])],
    ids=["projector", "start-end", "tower-not-cached", "tower-missing-local"],
)
def test_what_cannot_be_mapped_is_refused_in_one_line(med: SimpleNamespace, tower_on_hub: Path, tmp_path: Path,
                                                      changes: dict, code: int, words: list[str]) -> None:
    result = run_eval(_variant(med, tmp_path, **changes), tmp_path)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), result.stderr
    assert not (tmp_path / "r.json").exists()


def test_a_tower_config_that_does_not_fit_the_weights(med: SimpleNamespace, tmp_path: Path,
                                                      offline: Path) -> None:  # noqa: F811
    wrong = tmp_path / "wrong-tower"
    shutil.copytree(med.tower, wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["vision_config"]["num_hidden_layers"] = 2
    (wrong / "config.json").write_text(json.dumps(config))
    result = run_eval(_variant(med, tmp_path, mm_vision_tower=str(wrong)), tmp_path)
    assert result.exit_code == 4 and "num_hidden_layers 2" in result.stderr and "have 1" in result.stderr, \
        result.output
