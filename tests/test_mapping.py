"""Name matching from headers only: backbone detection, head lookup, rules, and the vision-tower trap."""

from __future__ import annotations

import pytest

from graft.core.mapping import Rule, match_names, module_group
from graft.io.checkpoint import Checkpoint
from graft.io.vector_folder import SafetyVector
from tests.conftest import ALL_LAYOUTS
from tests.test_merge import EXPECTED_NAMES


def shapes(folder) -> dict[str, tuple[int, ...]]:
    with Checkpoint.open(folder) as ckpt:
        return {n: i.shape for n, i in ckpt.tensors.items()}


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_backbone_prefix_is_detected_in_every_layout(layout: str, make_world) -> None:
    world = make_world(layout)
    match = match_names(SafetyVector.open(world.vector).shapes, shapes(world.target))
    body, head = EXPECTED_NAMES[layout]
    assert match.target_prefix == body
    assert not match.mismatches and not match.unmatched_donor
    targets = {p.donor: p.target for p in match.pairs}
    assert targets["lm_head.weight"] == head
    assert targets["model.layers.2.mlp.down_proj.weight"] == body + "layers.2.mlp.down_proj.weight"
    assert all(module_group(p.target) != "vision" for p in match.pairs)


def test_clip_tower_with_lm_shapes_is_not_mistaken_for_the_backbone(make_world) -> None:
    """LLaVA-Med's CLIP tower has `encoder.layers.N.self_attn.q_proj` with the LM's very shapes."""
    world = make_world("llava_med")
    target = shapes(world.target)
    clip = "model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert target[clip] == target["model.layers.0.self_attn.q_proj.weight"]
    match = match_names(SafetyVector.open(world.vector).shapes, target)
    assert clip not in match.by_target()


def test_explicit_rules_override_detection(make_world) -> None:
    world = make_world("llava")
    vector = SafetyVector.open(world.vector).shapes
    target = shapes(world.target)
    # Send layer 0's q_proj to layer 1's: a deliberate rewrite must win over what detection would pick.
    rule = Rule(r"^model\.layers\.0\.self_attn\.q_proj", "language_model.model.layers.1.self_attn.q_proj")
    match = match_names(vector, target, [rule])
    assert match.by_target()["language_model.model.layers.1.self_attn.q_proj.weight"].donor == (
        "model.layers.0.self_attn.q_proj.weight")
    assert "model.layers.1.self_attn.q_proj.weight" in match.unmatched_donor


def test_shape_mismatch_is_reported_not_grafted() -> None:
    donor = {"model.layers.0.mlp.up_proj.weight": (64, 32), "model.embed_tokens.weight": (100, 32)}
    target = {"model.layers.0.mlp.up_proj.weight": (48, 32), "model.embed_tokens.weight": (120, 32)}
    match = match_names(donor, target)
    assert [m.target for m in match.mismatches] == ["model.layers.0.mlp.up_proj.weight"]
    (pair,) = match.pairs
    assert pair.target == "model.embed_tokens.weight" and pair.rows == 100


@pytest.mark.parametrize(("name", "group"), [
    ("layers.0.self_attn.q_proj.weight", "attn"), ("layers.0.mlp.gate_proj.weight", "mlp"),
    ("layers.0.input_layernorm.weight", "norm"), ("layers.0.self_attn.q_norm.weight", "norm"),
    ("norm.weight", "norm"), ("embed_tokens.weight", "embed"), ("lm_head.weight", "head"),
    ("visual.blocks.0.attn.qkv.weight", "vision"), ("model.mm_projector.0.weight", "vision"),
    ("multi_modal_projector.linear_1.weight", "vision"), ("h.3.attn.c_attn.weight", "attn"),
    ("h.3.mlp.c_fc.weight", "mlp"), ("ln_f.weight", "norm"), ("wte.weight", "embed"),
])
def test_module_groups(name: str, group: str) -> None:
    assert module_group(name) == group
