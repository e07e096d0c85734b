"""Streamed merge against an independent NumPy reference, in every supported layout.

The reference reads the files with `safetensors.torch.load_file` (not graft's reader), maps names with the
prefixes each layout is documented to use (written out here, not taken from graft.core.mapping), and computes
θ + λ·τ in NumPy float32.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from graft.core.recipe import Recipe
from graft.engines.merge import merge
from graft.io.guard import MARKER
from graft.testing.layouts import LAYOUTS
from tests.conftest import ALL_LAYOUTS

# layout -> (LM body prefix on disk, head tensor on disk): docs/architecture.md's layout table, as independent data.
EXPECTED_NAMES = {
    "causal": ("model.", "lm_head.weight"),
    "qwen2_vl": ("model.", "lm_head.weight"),
    "qwen2_5_vl": ("model.", "lm_head.weight"),
    "qwen2_vl_t5names": ("model.language_model.", "lm_head.weight"),
    "llava": ("language_model.model.", "language_model.lm_head.weight"),
    "llava_med": ("model.", "lm_head.weight"),
    "gemma3": ("language_model.model.", "language_model.lm_head.weight"),
    "mistral3": ("language_model.model.", "language_model.lm_head.weight"),
}


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def target_name(layout: str, donor_name: str) -> str:
    body, head = EXPECTED_NAMES[layout]
    return head if donor_name == "lm_head.weight" else body + donor_name.removeprefix("model.")


def reference_graft(theta: torch.Tensor, tau: torch.Tensor, lam: float) -> torch.Tensor:
    """θ + λ·τ in NumPy float32 (rows of τ only, for a grown vocabulary), cast once to θ's dtype."""
    out = theta.float().numpy().copy()
    rows = tau.shape[0] if tau.dim() else None
    tau32 = tau.float().numpy()
    if rows is None:
        out = out + tau32 * np.float32(lam)
    else:
        out[:rows] = out[:rows] + tau32 * np.float32(lam)
    result = torch.from_numpy(out).to(theta.dtype)
    if rows is not None and rows < theta.shape[0]:
        result[rows:] = theta[rows:]  # new vocabulary rows pass through untouched
    return result


def stored_tau(base: dict[str, torch.Tensor], aligned: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """τ as `graft extract` stores it by default: the fp32 difference, cast to the base tensor's dtype."""
    diff = aligned[name].float().numpy() - base[name].float().numpy()
    return torch.from_numpy(diff).to(base[name].dtype)


def run_merge(world, out: Path, **coefficients) -> Path:
    recipe = Recipe.parse({"target": str(world.target), "vector": str(world.vector), "out": str(out),
                           "coefficients": coefficients or {"scale": 0.7}})
    return merge(recipe).out


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_merge_equals_reference_in_every_layout(layout: str, make_world, tmp_path: Path) -> None:
    world = make_world(layout, sharded=layout in ("llava", "llava_med", "qwen2_vl"))
    out = run_merge(world, tmp_path / "merged", scale=0.7)

    base, aligned = load_folder(world.base), load_folder(world.aligned)
    target, merged = load_folder(world.target), load_folder(out)
    assert merged.keys() == target.keys()
    grafted = set()
    for donor in base:
        name = target_name(layout, donor)
        if name not in target:
            continue  # e.g. a tied head the target does not store
        expected = reference_graft(target[name], stored_tau(base, aligned, donor), 0.7)
        assert merged[name].dtype == target[name].dtype
        assert torch.equal(merged[name].view(torch.uint8), expected.view(torch.uint8)), name
        grafted.add(name)
    assert len(grafted) >= len(base) - 1
    for name in target.keys() - grafted:  # vision tower, projector: byte for byte the target's
        assert torch.equal(merged[name].view(torch.uint8), target[name].view(torch.uint8)), name


@pytest.mark.parametrize("layout", [name for name in ALL_LAYOUTS if LAYOUTS[name].loadable])
def test_merged_folder_reloads_with_transformers(layout: str, make_world, tmp_path: Path) -> None:
    world = make_world(layout)
    out = run_merge(world, tmp_path / "merged")
    model_class = getattr(transformers, LAYOUTS[layout].auto_class)
    _, info = model_class.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / file).read_bytes() == (world.target / file).read_bytes(), file
    assert (out / "graft_recipe.yaml").exists() and "safety vector" in (out / "README.md").read_text()
    transformers.AutoTokenizer.from_pretrained(out)


def test_grown_vocabulary_grafts_only_donor_rows(make_world, tmp_path: Path) -> None:
    world = make_world("llava", extra_vocab=8)
    out = run_merge(world, tmp_path / "merged", scale=0.5)
    target, merged = load_folder(world.target), load_folder(out)
    base, aligned = load_folder(world.base), load_folder(world.aligned)
    embed = "language_model.model.embed_tokens.weight"
    vocab = base["model.embed_tokens.weight"].shape[0]
    assert merged[embed].shape[0] == vocab + 8
    assert torch.equal(merged[embed][vocab:], target[embed][vocab:])
    expected = reference_graft(target[embed], stored_tau(base, aligned, "model.embed_tokens.weight"), 0.5)
    assert torch.equal(merged[embed], expected)


def test_sharded_target_layout_is_mirrored(make_world, tmp_path: Path) -> None:
    world = make_world("llava", sharded=True)
    out = run_merge(world, tmp_path / "merged")
    source = json.loads((world.target / "model.safetensors.index.json").read_text())
    result = json.loads((out / "model.safetensors.index.json").read_text())
    assert result["weight_map"] == source["weight_map"]
    assert result["metadata"]["total_size"] == source["metadata"]["total_size"]
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert shards == sorted(p.name for p in world.target.glob("*.safetensors"))


def test_same_inputs_give_byte_identical_output(make_world, tmp_path: Path) -> None:
    world = make_world("qwen2_vl", sharded=True)

    def digest(folder: Path) -> dict[str, str]:
        # every file but graft's marker (its record of the files holds their inodes and times)
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
                if p.name != MARKER}

    first = digest(run_merge(world, tmp_path / "a", scale=0.3, blocks=[1.0, 0.5]))
    second = digest(run_merge(world, tmp_path / "b", scale=0.3, blocks=[1.0, 0.5]))
    assert first == second


def test_scale_zero_is_a_copy_of_the_target(make_world, tmp_path: Path) -> None:
    """λ = 0 everywhere is a valid recipe (the search's first baseline): every tensor comes out unchanged."""
    world = make_world("qwen2_vl", sharded=True)
    merged = load_folder(run_merge(world, tmp_path / "zero", scale=0.0))
    target = load_folder(world.target)
    assert merged.keys() == target.keys()
    for name, tensor in target.items():
        assert torch.equal(merged[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_layer_and_group_factors_set_each_tensors_lambda(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    out = run_merge(world, tmp_path / "merged", scale=0.5, blocks=[0.0, 2.0],
                    groups={"attn": 1.0, "mlp": 0.5, "norm": 0.0, "embed": 0.25, "head": 1.0})
    target, merged = load_folder(world.target), load_folder(out)
    base, aligned = load_folder(world.base), load_folder(world.aligned)
    # 4 layers in 2 blocks: layers 0-1 factor 0, layers 2-3 factor 2.
    cases = {
        "model.layers.0.self_attn.q_proj.weight": 0.0,
        "model.layers.3.self_attn.q_proj.weight": 0.5 * 2.0 * 1.0,
        "model.layers.2.mlp.up_proj.weight": 0.5 * 2.0 * 0.5,
        "model.layers.2.input_layernorm.weight": 0.0,
        "model.embed_tokens.weight": 0.5 * 0.25,
        "lm_head.weight": 0.5,
        "model.norm.weight": 0.0,
    }
    for name, lam in cases.items():
        expected = target[name] if lam == 0 else reference_graft(target[name], stored_tau(base, aligned, name), lam)
        assert torch.equal(merged[name], expected), name


def test_dtype_and_reshard_options(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    recipe = Recipe.parse({"target": str(world.target), "vector": str(world.vector), "out": str(tmp_path / "m"),
                           "coefficients": {"scale": 0.7}, "options": {"dtype": "float32", "shard_size": "30KB"}})
    out = merge(recipe).out
    merged, target = load_folder(out), load_folder(world.target)
    base, aligned = load_folder(world.base), load_folder(world.aligned)
    assert all(t.dtype == torch.float32 for t in merged.values())
    assert len(list(out.glob("model-*.safetensors"))) > 1
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    name = "model.layers.1.mlp.down_proj.weight"
    tau = stored_tau(base, aligned, name).float().numpy()
    expected = target[name].float().numpy() + tau * np.float32(0.7)
    assert np.array_equal(merged[name].numpy(), expected)
    _, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def assert_same_shards_under(world, tmp_path: Path, option: str, values: tuple[str, str]) -> None:
    """Merging with either value of an execution option must write the same bytes."""
    outs = []
    for value in values:
        recipe = Recipe.parse({"target": str(world.target), "vector": str(world.vector),
                               "out": str(tmp_path / value), "options": {option: value}})
        outs.append(merge(recipe).out)
    for a, b in zip(sorted(outs[0].glob("*.safetensors")), sorted(outs[1].glob("*.safetensors")), strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_small_chunks_give_the_same_bytes(make_world, tmp_path: Path) -> None:
    """Row chunking is an execution detail: 1 KB chunks must produce the same file as one chunk per tensor."""
    assert_same_shards_under(make_world("llava", extra_vocab=8), tmp_path, "chunk_size", ("1KB", "64MB"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_merge_equals_cpu_merge(make_world, tmp_path: Path) -> None:
    assert_same_shards_under(make_world("qwen2_vl"), tmp_path, "device", ("cpu", "cuda"))
