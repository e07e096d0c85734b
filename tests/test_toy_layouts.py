"""The toy checkpoints are what every other graft test trusts, so check them against the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open

from graft.testing.layouts import LAYOUTS, TextSpec, build_target, build_text_pair, load_state_dict_dir

EXTRA_VOCAB = 3
FAMILIES = ("llama", "qwen2", "mistral", "gemma3")

# Independently written expectations (from reading transformers 5.23 save_pretrained output and the
# LLaVA-repo checkpoints): layout -> (LM body prefix, head name, vision prefixes).
LEGACY_VLM = (
    "language_model.model.", "language_model.lm_head.weight", ("vision_tower.", "multi_modal_projector.")
)
EXPECTED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "causal": ("model.", "lm_head.weight", ()),
    "qwen2_vl": ("model.", "lm_head.weight", ("visual.",)),
    "qwen2_5_vl": ("model.", "lm_head.weight", ("visual.",)),
    "qwen2_vl_t5names": ("model.language_model.", "lm_head.weight", ("model.visual.",)),
    "llava": LEGACY_VLM,
    "llava_med": (
        "model.", "lm_head.weight", ("model.vision_tower.vision_tower.vision_model.", "model.mm_projector.")
    ),
    "gemma3": LEGACY_VLM,
    "mistral3": LEGACY_VLM,
}
CASES = [
    *(("causal", f) for f in FAMILIES),
    ("qwen2_vl", "qwen2"),
    ("qwen2_5_vl", "qwen2"),
    ("qwen2_vl_t5names", "qwen2"),
    ("llava", "llama"),
    ("llava", "mistral"),
    ("llava_med", "mistral"),
    ("gemma3", "gemma3"),
    ("mistral3", "mistral"),
    ("mistral3", "llama"),
]
IDS = [f"{lay}-{fam}" for lay, fam in CASES]


@pytest.fixture(scope="session")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("pairs")
    return {f: build_text_pair(root / f, TextSpec(family=f)) for f in FAMILIES}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, pairs) -> dict[tuple[str, str], tuple[Path, Path]]:
    """(layout, family) -> (origin, target), each built once for the whole session."""
    root = tmp_path_factory.mktemp("targets")
    return {
        (lay, fam): build_target(lay, root / f"{lay}-{fam}", pairs[fam][1], TextSpec(family=fam),
                                 extra_vocab=EXTRA_VOCAB, with_origin=True)
        for lay, fam in CASES
    }


def _keys(folder: Path) -> set[str]:
    return set(load_state_dict_dir(folder))


def _lm_map(donor_keys: set[str], layout: str) -> dict[str, str]:
    """donor (causal) name -> expected on-disk name in `layout`."""
    body, head, _ = EXPECTED[layout]
    out = {k: body + k.removeprefix("model.") for k in donor_keys if k.startswith("model.")}
    out["lm_head.weight"] = head
    return out


def _files_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------- table sanity


@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_layout_table_matches_expectations(layout: str) -> None:
    lay = LAYOUTS[layout]
    assert lay.name == layout
    assert (lay.lm_prefix, lay.head_name) == EXPECTED[layout][:2]
    for vp in EXPECTED[layout][2]:
        assert any(vp.startswith(p) for p in lay.vision_prefixes), vp
    assert lay.loadable == (layout != "llava_med")
    assert (lay.auto_class is None) == (not lay.loadable)


# --------------------------------------------------------------------------- text pair


def test_text_pair_tau_nonzero_everywhere(pairs) -> None:
    for base, aligned in pairs.values():
        b, a = load_state_dict_dir(base), load_state_dict_dir(aligned)
        assert b.keys() == a.keys()
        assert "lm_head.weight" in b and any(".layers.3." in k for k in b)
        for k in b:
            assert b[k].dtype == torch.bfloat16
            tau = a[k].float() - b[k].float()
            assert (tau != 0).all(), k


def test_text_pair_loads_and_has_tokenizer(pairs) -> None:
    base, _ = pairs["qwen2"]
    _, info = transformers.AutoModelForCausalLM.from_pretrained(base, output_loading_info=True)
    assert not any(info.values())
    tok = transformers.AutoTokenizer.from_pretrained(base)
    assert len(tok) == TextSpec().vocab_size
    assert tok.apply_chat_template([{"role": "user", "content": "w1 w2"}], tokenize=False)
    assert (base / "generation_config.json").exists()


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(("layout", "family"), CASES, ids=IDS)
def test_on_disk_names(built, pairs, layout: str, family: str) -> None:
    origin, target = built[(layout, family)]
    donor_keys = _keys(pairs[family][1])
    body, head, vision = EXPECTED[layout]
    for folder in (origin, target):
        keys = _keys(folder)
        lm_names = set(_lm_map(donor_keys, layout).values())
        assert lm_names <= keys
        rest = keys - lm_names
        for vp in vision:
            assert any(k.startswith(vp) for k in rest), vp
        assert all(k.startswith(vision) for k in rest), sorted(rest)[:5] if vision else rest
        assert any(k.startswith(body + "layers.0.") for k in keys)
        assert head in keys


@pytest.mark.parametrize(("layout", "family"), [c for c in CASES if LAYOUTS[c[0]].loadable], ids=str)
def test_reload_with_transformers(built, layout: str, family: str) -> None:
    cls = getattr(transformers, LAYOUTS[layout].auto_class)
    for folder in built[(layout, family)]:
        model, info = cls.from_pretrained(folder, output_loading_info=True)
        assert not any(info.values()), info
        emb = model.get_input_embeddings().weight
        assert emb.shape[0] == len(transformers.AutoTokenizer.from_pretrained(folder))


@pytest.mark.parametrize(("layout", "family"), CASES, ids=IDS)
def test_lm_is_donor_plus_finetune(built, pairs, layout: str, family: str) -> None:
    origin, target = built[(layout, family)]
    donor = load_state_dict_dir(pairs[family][1])
    org, tgt = load_state_dict_dir(origin), load_state_dict_dir(target)
    for src, dst in _lm_map(set(donor), layout).items():
        d = donor[src].float()
        assert torch.equal(org[dst].float(), d), dst  # origin: the unperturbed donor
        t = tgt[dst].float()
        if src in ("model.embed_tokens.weight", "lm_head.weight"):
            assert t.shape == (d.shape[0] + EXTRA_VOCAB, d.shape[1])
            t = t[: d.shape[0]]
        else:
            assert t.shape == d.shape
        assert (t != d).all(), dst  # τ of the fine-tune is nonzero in every entry
        assert (t - d).abs().max() < 0.1, dst  # a fine-tune, not a different model


@pytest.mark.parametrize(("layout", "family"), CASES, ids=IDS)
def test_origin_shares_vision_weights(built, layout: str, family: str) -> None:
    origin, target = built[(layout, family)]
    vision = EXPECTED[layout][2]
    org, tgt = load_state_dict_dir(origin), load_state_dict_dir(target)
    names = [k for k in tgt if vision and k.startswith(vision)]
    assert bool(names) == bool(vision)
    for k in names:
        assert torch.equal(org[k], tgt[k]), k


def test_target_config_vocab_grows(built) -> None:
    origin, target = built[("llava", "mistral")]
    cfgs = [json.loads((f / "config.json").read_text()) for f in (origin, target)]
    vocab = [c["text_config"]["vocab_size"] for c in cfgs]
    assert vocab == [TextSpec().vocab_size, TextSpec().vocab_size + EXTRA_VOCAB]


def test_llava_med_config_and_shape_trap(built) -> None:
    _, target = built[("llava_med", "mistral")]
    cfg = json.loads((target / "config.json").read_text())
    assert cfg["model_type"] == "llava_mistral"
    assert cfg["architectures"] == ["LlavaMistralForCausalLM"]
    assert cfg["mm_projector_type"] == "mlp2x_gelu"
    assert cfg["vocab_size"] == TextSpec().vocab_size + EXTRA_VOCAB
    sd = load_state_dict_dir(target)
    lm_q = sd["model.layers.0.self_attn.q_proj.weight"]
    clip_q = sd["model.vision_tower.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"]
    assert lm_q.shape == clip_q.shape  # the trap: same suffix and shape, different module
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.bias"} <= set(sd)


def test_rejects_unsupported_family(tmp_path: Path, pairs) -> None:
    with pytest.raises(ValueError, match="text families"):
        build_target("qwen2_vl", tmp_path, pairs["llama"][1], TextSpec(family="llama"))


# --------------------------------------------------------------------------- determinism & sharding


@pytest.mark.parametrize("layout", ["qwen2_vl", "llava_med", "qwen2_vl_t5names"])
def test_deterministic_bytes(tmp_path: Path, pairs, layout: str) -> None:
    family = LAYOUTS[layout].text_families[0]
    spec = TextSpec(family=family)
    rng = torch.get_rng_state()
    a = build_target(layout, tmp_path / "a", pairs[family][1], spec, extra_vocab=2)
    b = build_target(layout, tmp_path / "b", pairs[family][1], spec, extra_vocab=2)
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is neither used nor disturbed
    assert _files_bytes(a) == _files_bytes(b)
    c = build_target(layout, tmp_path / "c", pairs[family][1], spec, extra_vocab=2, seed=5)
    assert _files_bytes(a)["model.safetensors"] != _files_bytes(c)["model.safetensors"]


def test_text_pair_deterministic(tmp_path: Path) -> None:
    a = build_text_pair(tmp_path / "a", TextSpec(num_layers=1))
    b = build_text_pair(tmp_path / "b", TextSpec(num_layers=1))
    for x, y in zip(a, b, strict=True):
        assert _files_bytes(x) == _files_bytes(y)


def _check_sharded(folder: Path) -> None:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 1
    assert not (folder / "model.safetensors").exists()
    on_disk: dict[str, str] = {}
    total = 0
    for f in files:
        with safe_open(str(folder / f), "pt") as fh:
            for k in fh.keys():  # noqa: SIM118 (safe_open is no dict)
                on_disk[k] = f
                t = fh.get_slice(k)
                total += torch.Size(t.get_shape()).numel() * 2  # bf16
    assert on_disk == index["weight_map"]
    assert index["metadata"]["total_size"] == total


@pytest.mark.parametrize("layout", ["llava", "llava_med", "qwen2_vl_t5names", "gemma3"])
def test_sharded_targets(tmp_path: Path, pairs, layout: str) -> None:
    family = LAYOUTS[layout].text_families[0]
    spec = TextSpec(family=family)
    target = build_target(layout, tmp_path, pairs[family][1], spec, max_shard_size="20KB")
    _check_sharded(target)
    if LAYOUTS[layout].loadable:
        cls = getattr(transformers, LAYOUTS[layout].auto_class)
        _, info = cls.from_pretrained(target, output_loading_info=True)
        assert not any(info.values()), info


def test_sharded_text_pair(tmp_path: Path) -> None:
    for folder in build_text_pair(tmp_path, TextSpec(family="mistral"), max_shard_size="20KB"):
        _check_sharded(folder)


def test_tied_embeddings_have_no_head(tmp_path: Path) -> None:
    spec = TextSpec(family="qwen2", tie_word_embeddings=True)
    _, aligned = build_text_pair(tmp_path / "pair", spec)
    assert "lm_head.weight" not in _keys(aligned)
    for layout in ("qwen2_vl", "qwen2_vl_t5names"):
        target = build_target(layout, tmp_path / layout, aligned, spec)
        assert "lm_head.weight" not in _keys(target)
        cls = transformers.Qwen2VLForConditionalGeneration
        _, info = cls.from_pretrained(target, output_loading_info=True)
        assert not any(info.values()), info


def test_float32_dtype(tmp_path: Path) -> None:
    spec = TextSpec(family="mistral", num_layers=1)
    _, aligned = build_text_pair(tmp_path / "pair", spec, dtype=torch.float32)
    origin, target = build_target("llava_med", tmp_path / "t", aligned, spec, dtype=torch.float32,
                                  with_origin=True)
    for folder in (aligned, origin, target):
        assert {t.dtype for t in load_state_dict_dir(folder).values()} == {torch.float32}
