"""`graft extract`: τ equals aligned − base, and the manifest describes it truthfully."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from graft.errors import IncompatibleError
from graft.toy.layouts import TextSpec, build_text_pair
from graft.vector import SafetyVector, extract_vector
from tests.test_merge import load_folder


def test_vector_equals_difference_and_manifest_describes_it(make_world) -> None:
    world = make_world("causal", sharded=True)
    base, aligned, tau = load_folder(world.base), load_folder(world.aligned), load_folder(world.vector)
    manifest = json.loads((world.vector / "vector.json").read_text())
    assert manifest["format"] == "graft-vector" and manifest["format_version"] == 1
    assert tau.keys() == base.keys() == manifest["tensors"].keys()
    total_sq = 0.0
    for name, stored in tau.items():
        exact = aligned[name].double().numpy() - base[name].double().numpy()
        assert stored.dtype == base[name].dtype
        assert torch.equal(stored, torch.from_numpy(exact).to(stored.dtype)), name
        entry = manifest["tensors"][name]
        assert entry["shape"] == list(stored.shape)
        norm = float(np.linalg.norm(stored.double().numpy()))
        assert math.isclose(entry["norm"], norm, rel_tol=1e-9)
        assert math.isclose(entry["rel_norm"], norm / float(np.linalg.norm(base[name].double().numpy())),
                            rel_tol=1e-9)
        assert entry["inexact"] == int((stored.double().numpy() != exact).sum())
        total_sq += norm**2
    assert math.isclose(manifest["total_norm"], math.sqrt(total_sq), rel_tol=1e-9)
    assert manifest["tensors"]["model.layers.3.mlp.up_proj.weight"]["layer"] == 3
    assert manifest["tensors"]["model.layers.3.mlp.up_proj.weight"]["group"] == "mlp"
    assert manifest["tensors"]["model.layers.0.self_attn.k_proj.weight"]["group"] == "attn"
    assert manifest["tensors"]["model.norm.weight"] == {**manifest["tensors"]["model.norm.weight"],
                                                         "layer": None, "group": "norm"}
    assert manifest["tensors"]["lm_head.weight"]["group"] == "head"
    assert manifest["num_layers"] == 4 and manifest["backbone_prefix"] == "model."
    for file in world.base.glob("*.safetensors"):
        assert manifest["base"]["sha256"][file.name] == hashlib.sha256(file.read_bytes()).hexdigest()


def test_vector_folder_carries_a_card_that_describes_it(make_world) -> None:
    """README.md, as the Hub reads it: tags, no path in the metadata, and per-group norms that recompute from τ."""
    from huggingface_hub import ModelCard

    world = make_world("causal", sharded=True)
    card = ModelCard.load(world.vector / "README.md")
    assert card.data.tags == ["graft", "task-vector", "safety"]
    assert card.data.base_model is None  # local sources: a path never goes into the Hub's metadata
    tau = load_folder(world.vector)
    manifest = json.loads((world.vector / "vector.json").read_text())
    assert f"- {len(tau)} tensors over {manifest['num_layers']} layers" in card.text
    groups: dict[str, list[float]] = {}
    for name, stored in tau.items():
        groups.setdefault(manifest["tensors"][name]["group"], []).append(float(np.linalg.norm(stored.double())))
    for group, norms in groups.items():
        row = next(line for line in card.text.splitlines() if line.startswith(f"| {group} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert int(cells[1]) == len(norms)
        assert math.isclose(float(cells[2]), math.sqrt(sum(n * n for n in norms)), rel_tol=1e-3), group
    # local sources by folder name, never by path: a card is published, a path says where a user keeps files
    assert "aligned: `aligned` (local folder)" in card.text and "base: `base` (local folder)" in card.text
    assert str(world.aligned.parent) not in card.text


def test_float32_storage_is_exact(make_world) -> None:
    world = make_world("causal", vector_dtype="float32")
    vector = SafetyVector.open(world.vector)
    assert vector.manifest.inexact_elements == 0 and vector.manifest.dtype == "float32"
    base, aligned = load_folder(world.base), load_folder(world.aligned)
    tau = load_file(world.vector / "vector.safetensors")
    name = "model.layers.1.self_attn.o_proj.weight"
    assert tau[name].dtype == torch.float32
    assert torch.equal(tau[name].double(), aligned[name].double() - base[name].double())


def test_different_architectures_are_refused_with_the_difference(tmp_path: Path) -> None:
    base, _ = build_text_pair(tmp_path / "a", TextSpec(family="llama"))
    _, other = build_text_pair(tmp_path / "b", TextSpec(family="llama", intermediate_size=48))
    with pytest.raises(IncompatibleError, match=r"intermediate_size: base 64 vs aligned 48"):
        extract_vector(base, other, tmp_path / "vec")
    assert not (tmp_path / "vec").exists()
