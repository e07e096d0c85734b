"""The resident graft against the streamed merge: after `apply(c)` the live model must hold, bit for bit, what
`from_pretrained` loads from `graft merge`'s output for the same coefficients, in every loadable layout.

The references are independent of graft.engines.resident: the merged folder is written by
`graft.engines.merge.merge` (itself checked against a NumPy reference in test_merge.py) and reloaded by
transformers; in-memory names are written out here from the layouts' documented renaming, not taken from
graft.core.mapping.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from graft.core.recipe import Coefficients, Recipe
from graft.engines.extract import extract_vector
from graft.engines.merge import merge
from graft.engines.resident import ResidentGraft
from graft.errors import IncompatibleError, UsageError
from graft.evals.generation import HFBackend
from graft.testing.layouts import LAYOUTS, TextSpec, build_target, build_text_pair
from tests.conftest import ALL_LAYOUTS

LOADABLE = [name for name in ALL_LAYOUTS if LAYOUTS[name].loadable]
# Layer-wise, with a group at 0 and others above and below 1: every kind of λ a trial produces.
TRIAL = Coefficients(scale=0.6, control_points=[0.2, 1.0, 0.5], groups={"mlp": 0.5, "norm": 0.0, "embed": 2.0,
                                                                         "head": 0.75})
OTHER = Coefficients(scale=1.3, blocks=[1.0, -0.5], groups={"attn": 0.25})

# layout -> (LM prefix on disk, LM prefix in memory, head on disk, head in memory): transformers 5.23's renaming.
MEMORY_NAMES = {
    "causal": ("model.", "model.", "lm_head.weight", "lm_head.weight"),
    "qwen2_vl": ("model.", "model.language_model.", "lm_head.weight", "lm_head.weight"),
    "qwen2_5_vl": ("model.", "model.language_model.", "lm_head.weight", "lm_head.weight"),
    "qwen2_vl_t5names": ("model.language_model.", "model.language_model.", "lm_head.weight", "lm_head.weight"),
    "llava": ("language_model.model.", "model.language_model.", "language_model.lm_head.weight", "lm_head.weight"),
    "gemma3": ("language_model.model.", "model.language_model.", "language_model.lm_head.weight", "lm_head.weight"),
    "mistral3": ("language_model.model.", "model.language_model.", "language_model.lm_head.weight",
                 "lm_head.weight"),
}


def base_recipe(world, **options) -> Recipe:
    return Recipe.parse({"target": str(world.target), "vector": str(world.vector), "options": options})


def model_class(layout: str):
    return getattr(transformers, LAYOUTS[layout].auto_class)


def merged_state(recipe: Recipe, coefficients: Coefficients, out: Path, layout: str,
                 dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """What `graft merge` writes for these coefficients, as transformers loads it."""
    folder = merge(recipe.model_copy(update={"coefficients": coefficients, "out": str(out)})).out
    return loaded_state(folder, layout, dtype)


def loaded_state(folder: Path, layout: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return model_class(layout).from_pretrained(folder, **kwargs).state_dict()


def snapshot(resident: ResidentGraft) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().clone() for name, t in resident.engine.model.state_dict().items()}


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.detach().cpu().reshape(-1).view(torch.uint8), b.detach().cpu().reshape(-1).view(torch.uint8))


def assert_same_weights(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert state.keys() == reference.keys()
    differing = [name for name in reference if not same_bytes(state[name], reference[name])]
    assert not differing, differing[:5]


def changed(state: dict[str, torch.Tensor], pristine: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in pristine if not same_bytes(state[name], pristine[name])}


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("layout", LOADABLE)
def test_trial_weights_equal_merge_output_in_every_layout(layout: str, fused: bool, make_world,
                                                          tmp_path: Path) -> None:
    world = make_world(layout)
    recipe = base_recipe(world)
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", text_only=True, fused=fused) as resident:
        assert resident.dtype == torch.bfloat16  # the target's stored dtype
        disk_body, memory_body, disk_head, memory_head = MEMORY_NAMES[layout]
        for disk, memory in resident.param_names.items():
            assert memory == (memory_head if disk == disk_head else memory_body + disk.removeprefix(disk_body))
        resident.apply(TRIAL)
        state = snapshot(resident)
    reference = merged_state(recipe, TRIAL, tmp_path / "merged", layout)
    assert_same_weights(state, reference)
    # Not vacuous: exactly the tensors with λ ≠ 0 changed (norms are at 0 in TRIAL, vision has no partner).
    grafted = changed(state, loaded_state(world.target, layout))
    assert grafted and not any("norm" in name or "vision" in name or "visual" in name for name in grafted)
    assert any("embed_tokens" in name for name in grafted) and any(".mlp." in name for name in grafted)


def test_apply_is_repeatable_and_lambda_zero_is_the_pristine_target(make_world, tmp_path: Path) -> None:
    world = make_world("qwen2_vl")
    pristine = loaded_state(world.target, "qwen2_vl")
    with ResidentGraft.from_recipe(base_recipe(world), load=HFBackend.load, device="cpu", text_only=True) as resident:
        assert_same_weights(snapshot(resident), pristine)  # nothing grafted before the first apply
        resident.apply(TRIAL)
        first = snapshot(resident)
        resident.apply(OTHER)
        second = snapshot(resident)
        assert changed(second, first)
        resident.apply(TRIAL)
        assert_same_weights(snapshot(resident), first)
        resident.apply(Coefficients(scale=0.0))
        assert_same_weights(snapshot(resident), pristine)
        resident.apply(OTHER)
        assert_same_weights(snapshot(resident), second)
        resident.apply(Coefficients(groups=dict.fromkeys(["attn", "mlp", "norm", "embed", "head"], 0.0)))
        assert_same_weights(snapshot(resident), pristine)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_grown_vocabulary_grafts_only_the_donor_rows(fused: bool, make_world, tmp_path: Path) -> None:
    world = make_world("llava", extra_vocab=8)
    recipe = base_recipe(world)
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", text_only=True, fused=fused) as resident:
        resident.apply(TRIAL)
        state = snapshot(resident)
        # Only the donor's rows are held: pristine + τ is twice the vector's bytes (both bf16), new rows excluded.
        vector_bytes = sum(t.nbytes for t in load_file(world.vector / "vector.safetensors").values())
        assert resident.resident_bytes == 2 * vector_bytes
    assert_same_weights(state, merged_state(recipe, TRIAL, tmp_path / "merged", "llava"))
    pristine = loaded_state(world.target, "llava")
    embed = "model.language_model.embed_tokens.weight"
    vocab = world.spec.vocab_size
    assert state[embed].shape[0] == vocab + 8
    assert same_bytes(state[embed][vocab:], pristine[embed][vocab:])
    assert not same_bytes(state[embed][:vocab], pristine[embed][:vocab])


@pytest.mark.parametrize(("dtype", "vector_dtype", "extra_vocab", "fused"), [(torch.float32, "float32", 0, False),
                                                                            (torch.bfloat16, "auto", 8, False),
                                                                            (torch.bfloat16, "auto", 8, True)])
def test_orthogonal_variant_equals_merge(dtype, vector_dtype, extra_vocab, fused, make_world, tmp_path: Path) -> None:
    world = make_world("llava", dtype=dtype, vector_dtype=vector_dtype, extra_vocab=extra_vocab)
    # Small merge chunks: the projection coefficient is summed over several chunks, as merge sums it.
    recipe = base_recipe(world, origin=str(world.origin), orthogonalize=True, chunk_size="2KB")
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", text_only=True, fused=fused) as resident:
        resident.apply(TRIAL)
        state = snapshot(resident)
        resident.apply(OTHER)
        other = snapshot(resident)
    assert_same_weights(state, merged_state(recipe, TRIAL, tmp_path / "a", "llava"))
    assert_same_weights(other, merged_state(recipe, OTHER, tmp_path / "b", "llava"))
    plain = merged_state(base_recipe(world), TRIAL, tmp_path / "plain", "llava")
    assert changed(state, plain)  # the projection did something


def test_another_dtype_equals_merge_with_that_output_dtype(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    recipe = base_recipe(world)
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", dtype="float32") as resident:
        assert resident.dtype == torch.float32
        resident.apply(TRIAL)
        state = snapshot(resident)
        trial_recipe = resident.recipe(TRIAL)
    assert trial_recipe.options.dtype == "float32" and trial_recipe.coefficients == TRIAL
    reference = merged_state(recipe.updated(options={"dtype": "float32"}), TRIAL, tmp_path / "m", "causal",
                             dtype=torch.float32)
    assert all(t.dtype == torch.float32 for t in reference.values())
    assert_same_weights(state, reference)


def test_recipe_reproduces_the_trial_weights(make_world, tmp_path: Path) -> None:
    world = make_world("qwen2_5_vl")
    with ResidentGraft.from_recipe(base_recipe(world), load=HFBackend.load, device="cpu", text_only=True) as resident:
        resident.apply(OTHER)
        state = snapshot(resident)
        trial_recipe = resident.recipe(OTHER)
    assert trial_recipe.options.dtype == "auto" and trial_recipe.target == str(world.target)
    out = merge(trial_recipe.model_copy(update={"out": str(tmp_path / "m")})).out
    assert_same_weights(state, loaded_state(out, "qwen2_5_vl"))


def test_trial_weights_change_the_engine_logits(make_world, tmp_path: Path) -> None:
    world = make_world("qwen2_vl")
    recipe = base_recipe(world)
    ids = torch.tensor([[1, 5, 9, 17, 33, 64, 100]])
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu") as resident, torch.no_grad():
        engine = resident.engine
        assert engine.is_multimodal  # the processor came with it
        before = engine.model(input_ids=ids).logits
        scores_before = engine.loglikelihood([("w1 w2", " w3")])
        resident.apply(TRIAL)
        after = engine.model(input_ids=ids).logits
        scores_after = engine.loglikelihood([("w1 w2", " w3")])
        resident.apply(Coefficients(scale=0.0))
        assert torch.equal(engine.model(input_ids=ids).logits, before)
    assert not torch.allclose(before, after)
    assert scores_before[0][0] != scores_after[0][0]
    out = merge(recipe.model_copy(update={"coefficients": TRIAL, "out": str(tmp_path / "m")})).out
    merged = model_class("qwen2_vl").from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(merged(input_ids=ids).logits, after)


@pytest.fixture(scope="module")
def tied_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tied-embedding donor pair and Qwen2-VL target (lm_head stored once), plus the target with lm_head stored
    too (equal values, so transformers ties them on load)."""
    root = tmp_path_factory.mktemp("tied")
    spec = TextSpec(family="qwen2", tie_word_embeddings=True)
    base, aligned = build_text_pair(root / "pair", spec)
    target = build_target("qwen2_vl", root / "model", aligned, spec)
    assert isinstance(target, Path)
    both = root / "both-stored"
    shutil.copytree(target, both)
    weights = load_file(both / "model.safetensors")
    assert "lm_head.weight" not in weights
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, str(both / "model.safetensors"), metadata={"format": "pt"})
    return {"target": target, "both": both, "vector": extract_vector(base, aligned, root / "vector").out}


def test_tied_head_stored_once_is_grafted_once(tied_world, tmp_path: Path) -> None:
    recipe = Recipe.parse({"target": str(tied_world["target"]), "vector": str(tied_world["vector"])})
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", text_only=True) as resident:
        model = resident.engine.model
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
        resident.apply(TRIAL)
        assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
        state = snapshot(resident)
    assert_same_weights(state, merged_state(recipe, TRIAL, tmp_path / "m", "qwen2_vl"))


@pytest.mark.parametrize("vector", ["tied", "untied"])
def test_tied_pair_stored_twice_is_untied_like_the_merged_reload(vector: str, tied_world, make_world,
                                                                 tmp_path: Path) -> None:
    """Both names on disk: once grafted they differ, so transformers reloads the merge untied; so must we be."""
    vector_path = tied_world["vector"] if vector == "tied" else make_world("qwen2_vl").vector  # τ of lm_head too
    recipe = Recipe.parse({"target": str(tied_world["both"]), "vector": str(vector_path)})
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", text_only=True) as resident:
        model = resident.engine.model
        assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight
        resident.apply(TRIAL)
        state = snapshot(resident)
    assert_same_weights(state, merged_state(recipe, TRIAL, tmp_path / "m", "qwen2_vl"))
    assert not same_bytes(state["lm_head.weight"], state["model.language_model.embed_tokens.weight"])


def test_llava_med_original_layout_text_only_equals_merge(make_world, tmp_path: Path) -> None:
    """LLaVA-Med's original layout: its language model is loaded alone (no vision tower config needed, nothing
    asked of the hub), and a trial's weights equal the merged folder's, loaded the same way."""
    from graft.evals.generation import HFBackend

    world = make_world("llava_med")
    recipe = base_recipe(world)
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", text_only=True) as resident:
        assert type(resident.engine.model).__name__ == "MistralForCausalLM"
        resident.apply(TRIAL)
        state = snapshot(resident)
    out = merge(recipe.model_copy(update={"coefficients": TRIAL, "out": str(tmp_path / "merged")})).out
    reference = HFBackend.load(out, device="cpu", dtype="bfloat16", text_only=True).model.state_dict()
    assert_same_weights(state, reference)
    grafted = changed(state, HFBackend.load(world.target, device="cpu", dtype="bfloat16", text_only=True)
                      .model.state_dict())
    assert any("embed_tokens" in name for name in grafted) and any(".mlp." in name for name in grafted)


def test_a_wrong_name_mapping_is_caught_by_the_byte_check(make_world, monkeypatch) -> None:
    import graft.engines.resident as resident_module

    real = resident_module.parameter_names

    def swapped(target, model):
        names = real(target, model)
        q, o = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.o_proj.weight"
        names[q], names[o] = names[o], names[q]  # same shape: only the bytes can tell
        return names

    monkeypatch.setattr(resident_module, "parameter_names", swapped)
    pattern = r"tensor '\S+\.(q|o)_proj\.weight' was matched to parameter '\S+\.(o|q)_proj\.weight'.*values differ"
    with pytest.raises(IncompatibleError, match=pattern):
        ResidentGraft.from_recipe(base_recipe(make_world("causal")), load=HFBackend.load, device="cpu")


def test_usage_errors_and_close(make_world) -> None:
    recipe = base_recipe(make_world("causal"))
    with pytest.raises(UsageError, match="dtype 'fp8'"):
        ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", dtype="fp8")
    with pytest.raises(UsageError, match="offload"):
        ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", offload=True)
    resident = ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu")
    resident.close()
    with pytest.raises(UsageError, match="closed"):
        resident.apply(TRIAL)
    resident.close()  # idempotent


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("offload", "fused"), [(False, False), (True, False), (False, True)])
def test_cuda_resident_weights_equal_cpu_merge(offload: bool, fused: bool, make_world, tmp_path: Path) -> None:
    world = make_world("qwen2_vl", extra_vocab=8)
    recipe = base_recipe(world, device="cpu")
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cuda", text_only=True, offload=offload,
                                   fused=fused) as resident:
        assert resident.engine.device.type == "cuda"
        resident.apply(OTHER)
        resident.apply(TRIAL)
        state = snapshot(resident)
    assert_same_weights(state, merged_state(recipe, TRIAL, tmp_path / "m", "qwen2_vl"))
