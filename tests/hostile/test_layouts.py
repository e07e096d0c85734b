"""Layouts whose layer k is not the donor's layer k: a silent wrong graft unless the plan knows.

Llama-3.2-Vision (`mllama`) inserts cross-attention layers into Llama-3.1's decoder and lists them in
`text_config.cross_attention_layers`. A tiny real `MllamaForConditionalGeneration` is built from a config, saved with
`save_pretrained`, merged through the CLI, and reloaded with `from_pretrained`; every parameter is checked against a
NumPy float32 reference of θ + λ·τ with τ taken from the donor layer that must land there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from graft.core.mapping import donor_layer_map, inserted_layers
from graft.engines.extract import extract_vector
from graft.testing.layouts import TextSpec, build_text_pair, load_state_dict_dir
from tests.test_bad_input import assert_error, assert_no_output, cli, tree_hash

SPEC = TextSpec(family="llama", num_layers=4)
CROSS = [1, 4]  # inserted cross-attention layers: the target's text stack has 4 + 2 layers
SELF_LAYERS = [0, 2, 3, 5]  # where donor layers 0..3 must land
SCALE = 0.75


def _mllama(out: Path, seed: int = 0) -> Path:
    text = dict(vocab_size=SPEC.vocab_size, hidden_size=SPEC.hidden_size, intermediate_size=SPEC.intermediate_size,
                num_hidden_layers=SPEC.num_layers + len(CROSS), num_attention_heads=SPEC.num_heads,
                num_key_value_heads=SPEC.num_kv_heads, cross_attention_layers=CROSS, max_position_embeddings=64,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
                  image_size=28, patch_size=14, vision_output_dim=SPEC.hidden_size, intermediate_layers_indices=[0],
                  max_num_tiles=1, supported_aspect_ratios=[[1, 1]])
    config = transformers.MllamaConfig(text_config=text, vision_config=vision, image_token_index=SPEC.vocab_size - 1)
    torch.manual_seed(seed)
    model = transformers.MllamaForConditionalGeneration(config).to(torch.float32)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for param in model.parameters():  # default init leaves gates and norms constant: make every value distinct
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mllama")
    base, aligned = build_text_pair(root / "pair", SPEC, dtype=torch.float32)
    vector = extract_vector(base, aligned, root / "vector", hash_sources=False).out
    return {"vector": vector, "target": _mllama(root / "target")}


def _params(folder: Path) -> dict[str, torch.Tensor]:
    model = transformers.MllamaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def _expected(theta: torch.Tensor, tau: torch.Tensor) -> np.ndarray:
    """θ + (τ·λ) in float32, two rounded operations: an independent NumPy reference."""
    return theta.numpy().astype(np.float32) + tau.numpy().astype(np.float32) * np.float32(SCALE)


def test_inserted_layers_are_read_from_the_config() -> None:
    assert inserted_layers({"text_config": {"cross_attention_layers": [4, 1]}}) == (
        "text_config.cross_attention_layers", [1, 4])
    assert inserted_layers({"cross_attention_layers": [2]}) == ("cross_attention_layers", [2])  # any level
    assert inserted_layers({"text_config": {"num_hidden_layers": 4}}) is None
    assert donor_layer_map(CROSS, 6) == dict(enumerate(SELF_LAYERS))
    with pytest.raises(ValueError, match="cross_attention_layers must be a list of layer indices"):
        inserted_layers({"text_config": {"cross_attention_layers": ["1"]}})


def test_mllama_donor_layers_land_on_the_self_attention_layers(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "merged"
    before = tree_hash(world["target"], world["vector"])
    result = cli("merge", "-t", world["target"], "--vector", world["vector"], "-o", out, "-q", "--scale", SCALE,
                 "--strict")
    assert result.exit_code == 0, result.output
    assert tree_hash(world["target"], world["vector"]) == before
    tau = load_state_dict_dir(world["vector"])
    original, merged = _params(world["target"]), _params(out)
    assert original.keys() == merged.keys()
    target_of = {f"model.language_model.layers.{m}.": f"model.layers.{k}." for k, m in enumerate(SELF_LAYERS)}
    checked = unchanged = 0
    for name, theta in original.items():
        donor = None
        for target_layer, donor_layer in target_of.items():
            if name.startswith(target_layer):
                donor = donor_layer + name[len(target_layer):]
        if name == "model.language_model.norm.weight":
            donor = "model.norm.weight"
        if name == "lm_head.weight":
            donor = "lm_head.weight"
        if name == "model.language_model.embed_tokens.weight":  # mllama adds 8 rows: only the donor's are grafted
            rows = tau["model.embed_tokens.weight"].shape[0]
            np.testing.assert_array_equal(merged[name][:rows].numpy(),
                                          _expected(theta[:rows], tau["model.embed_tokens.weight"]))
            assert torch.equal(merged[name][rows:], theta[rows:])
            checked += 1
            continue
        if donor is None:  # cross-attention layers, vision tower, projector: untouched
            assert torch.equal(merged[name], theta), name
            unchanged += 1
            continue
        np.testing.assert_array_equal(merged[name].numpy(), _expected(theta, tau[donor]), err_msg=name)
        checked += 1
    assert checked == len(tau)  # every τ tensor landed exactly once
    cross = [n for n in original if any(f"layers.{c}." in n for c in CROSS) and "language_model" in n]
    assert cross and unchanged > len(cross)


def test_without_the_config_key_the_misaligned_plan_is_refused(world: dict[str, Path], tmp_path: Path) -> None:
    """The same checkpoint with the declaration removed: donor layer 1 would land in a cross-attention layer. The
    structure check refuses (exit 4) instead of grafting MLPs into the wrong layers."""
    target = tmp_path / "target"
    shutil.copytree(world["target"], target)
    config = json.loads((target / "config.json").read_text())
    del config["text_config"]["cross_attention_layers"]
    (target / "config.json").write_text(json.dumps(config))
    before = tree_hash(target, world["vector"])
    out = tmp_path / "outputs" / "merged"
    out.parent.mkdir()
    line = assert_error(cli("merge", "-t", target, "--vector", world["vector"], "-o", out, "-q"), 4,
                        "vector layer 1", "another structure", "--allow-partial")
    assert "self_attn" in line
    assert_no_output(out)
    assert tree_hash(target, world["vector"]) == before
    assert_error(cli("plan", "-t", target, "--vector", world["vector"], "-q"), 4, "another structure")
    # Asked for explicitly, the partial graft goes through (with its warning about the unmatched tensors).
    result = cli("merge", "-t", target, "--vector", world["vector"], "-o", out, "-q", "--allow-partial")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "no partner" in result.stderr


def test_a_shallower_target_is_refused(world: dict[str, Path], tmp_path: Path) -> None:
    """A target whose stack is shallower than the donor's: the deepest donor layers have no home."""
    base, aligned = build_text_pair(tmp_path / "deep", TextSpec(family="llama", num_layers=6), dtype=torch.float32)
    deep = extract_vector(base, aligned, tmp_path / "deep_vector", hash_sources=False).out
    _, shallow = build_text_pair(tmp_path / "shallow", SPEC, dtype=torch.float32)
    assert_error(cli("plan", "-t", shallow, "--vector", deep, "-q"), 4, "vector layers 4–5", "differ in depth")
