# ruff: noqa: F811  (fixtures imported from tests/test_bad_input.py are parameters here)
"""The dtype policy (graft/io/dtype_policy.py): what is read as numbers is F32, F16 or BF16 and not quantized, in
extract, plan, merge and inspect alike, refused by name before any work; everything else is copied byte for byte. And
the property behind it: whatever dtypes a target holds, `plan` exit 0 means `merge` does not fail on a dtype."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from graft.io.dtypes import TAGS
from tests.test_bad_input import (  # noqa: F401 (fixtures)
    INDEX,
    Models,
    assert_error,
    assert_no_output,
    built,
    cli,
    extract_args,
    m,
    merge_args,
    outdir,
    plan_args,
    shard_of,
    tree_hash,
)

MLP = "model.layers.1.mlp.up_proj.weight"  # a vector tensor
TARGET_MLP = "language_model.model.layers.1.mlp.up_proj.weight"  # where it is grafted in the llava target
VISION = "vision_tower.post_layernorm.weight"  # copied, never grafted


def retype(folder: Path, name: str, dtype: torch.dtype) -> Path:
    """Store tensor `name` of `folder` as `dtype` (values converted as torch converts them)."""
    shard = shard_of(folder, name)
    tensors = load_file(shard)
    tensors[name] = tensors[name].float().mul(100 if not dtype.is_floating_point else 1).to(dtype)
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


def add_beside(folder: Path, name: str, companion: str, value: torch.Tensor) -> Path:
    """Add tensor `companion` to the shard holding `name`, and to the index."""
    shard = shard_of(folder, name)
    tensors = load_file(shard)
    tensors[companion] = value
    save_file(tensors, shard, metadata={"format": "pt"})
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"][companion] = shard.name
    (folder / INDEX).write_text(json.dumps(index))
    return shard


def _refused_everywhere(m: Models, outdir: Path, *names: str) -> None:
    """plan, merge and inspect refuse alike (exit 3, one line), nothing written, inputs unchanged."""
    before = tree_hash(m.target, m.vector)
    assert_error(cli(*plan_args(m.target, m.vector)), 3, *names)
    assert_error(cli(*merge_args(m.target, m.vector, outdir / "merged")), 3, *names)
    assert_no_output(outdir / "merged")
    assert_error(cli("inspect", "--vector", m.vector, "--target", m.target, "--out", outdir / "report",
                     "--device", "cpu"), 3, *names)
    assert not (outdir / "report").exists()
    assert tree_hash(m.target, m.vector) == before


@pytest.mark.parametrize(("dtype", "words"), [
    (torch.float8_e4m3fn, "F8_E4M3, an 8-bit float"),
    (torch.float8_e5m2, "F8_E5M2, an 8-bit float"),
    (torch.float64, "F64, float64"),
    (torch.int8, "I8, not floating point"),
])
def test_a_grafted_target_tensor_outside_the_policy_is_refused_by_plan_merge_and_inspect(
        m: Models, outdir: Path, dtype: torch.dtype, words: str) -> None:
    shard = retype(m.target, TARGET_MLP, dtype)
    _refused_everywhere(m, outdir, str(shard), TARGET_MLP, words, "would be grafted")


@pytest.mark.parametrize("companion", ["weight_scale_inv", "weight_scale", "SCB"])
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.bfloat16])
def test_a_scaled_weight_is_refused_whatever_its_dtype(m: Models, outdir: Path, companion: str,
                                                       dtype: torch.dtype) -> None:
    """fp8 with a `weight_scale_inv` (or any quantization companion) beside it: its stored numbers are not the
    weights; the bf16 case shows the companion alone decides."""
    retype(m.target, TARGET_MLP, dtype)
    scale = TARGET_MLP.removesuffix("weight") + companion
    shard = add_beside(m.target, TARGET_MLP, scale, torch.ones(1, dtype=torch.float32))
    words = "quantized" if dtype == torch.bfloat16 else "8-bit float"
    _refused_everywhere(m, outdir, str(shard), TARGET_MLP, words)
    if dtype == torch.bfloat16:
        assert_error(cli(*plan_args(m.target, m.vector)), 3, scale)


def test_a_quantization_config_is_refused(m: Models, outdir: Path) -> None:
    config = json.loads((m.target / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (m.target / "config.json").write_text(json.dumps(config))
    _refused_everywhere(m, outdir, str(m.target / "config.json"), "quantization_config (fp8)")


@pytest.mark.parametrize(("side", "dtype", "words"), [
    ("aligned", torch.int8, "I8, not floating point"),
    ("base", torch.int8, "I8, not floating point"),
    ("aligned", torch.float8_e4m3fn, "F8_E4M3"),
    ("base", torch.float64, "F64"),
])
def test_extract_refuses_a_side_outside_the_policy(m: Models, outdir: Path, side: str, dtype: torch.dtype,
                                                   words: str) -> None:
    """An int8 aligned model gave a τ of pure garbage (max |τ| 64 where it is 0.01) with exit 0."""
    folder = m.aligned if side == "aligned" else m.base
    shard = retype(folder, MLP, dtype)
    before = tree_hash(m.base, m.aligned)
    assert_error(cli(*extract_args(m.base, m.aligned, outdir / "vec")), 3, str(shard), MLP, side, words)
    assert_no_output(outdir / "vec")
    assert tree_hash(m.base, m.aligned) == before


def test_extract_refuses_quantized_sources(m: Models, outdir: Path) -> None:
    config = json.loads((m.aligned / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (m.aligned / "config.json").write_text(json.dumps(config))
    assert_error(cli(*extract_args(m.base, m.aligned, outdir / "vec")), 3, str(m.aligned / "config.json"),
                 "quantization_config (bitsandbytes)")
    assert_no_output(outdir / "vec")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float64, torch.int8])
def test_tensors_that_are_only_copied_may_have_any_dtype(m: Models, outdir: Path, dtype: torch.dtype) -> None:
    """A vision tensor in fp8, float64 or int8 is never read as numbers: copied byte for byte, and cast exactly by
    `--dtype` when it is a float."""
    retype(m.target, VISION, dtype)
    original = load_file(shard_of(m.target, VISION))[VISION]
    assert cli(*plan_args(m.target, m.vector, "-q")).exit_code == 0
    result = cli(*merge_args(m.target, m.vector, outdir / "merged"))
    assert result.exit_code == 0, result.output
    copied = load_file(shard_of(outdir / "merged", VISION))[VISION]
    assert copied.dtype == dtype and torch.equal(copied.view(torch.uint8), original.view(torch.uint8))
    result = cli(*merge_args(m.target, m.vector, outdir / "cast", "--dtype", "float32"))
    assert result.exit_code == 0, result.output
    cast = load_file(shard_of(outdir / "cast", VISION))[VISION]
    expected = original.to(torch.float32) if dtype.is_floating_point else original
    assert torch.equal(cast, expected)


# -- the property: plan exit 0 ⇒ merge does not fail on a dtype ------------------------------------------------------
EVERY_DTYPE = sorted(TAGS)
GRAFTED = [TARGET_MLP, "language_model.model.layers.0.self_attn.q_proj.weight", "language_model.model.norm.weight"]


@settings(derandomize=True, max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtypes=st.lists(st.sampled_from(EVERY_DTYPE), min_size=len(GRAFTED) + 1, max_size=len(GRAFTED) + 1),
       out_dtype=st.sampled_from(["auto", "bfloat16", "float16", "float32"]),
       quantized=st.sampled_from([None, "companion", "config"]))
def test_plan_exit_0_means_merge_does_not_fail_on_a_dtype(built: Models, tmp_path_factory: pytest.TempPathFactory,
                                                          dtypes: list[str], out_dtype: str,
                                                          quantized: str | None) -> None:
    work = tmp_path_factory.mktemp("dtypes")
    target = work / "target"
    shutil.copytree(built.target, target)
    for name, tag in zip([*GRAFTED, VISION], dtypes, strict=True):
        retype(target, name, TAGS[tag][0])
    if quantized == "companion":
        add_beside(target, GRAFTED[1], GRAFTED[1].removesuffix("weight") + "weight_scale", torch.ones(1))
    elif quantized == "config":
        config = json.loads((target / "config.json").read_text())
        config["text_config"]["quantization_config"] = {"quant_method": "gptq"}
        (target / "config.json").write_text(json.dumps(config))
    planned = cli(*plan_args(target, built.vector, "-q"))
    merged = cli(*merge_args(target, built.vector, work / "merged", "--dtype", out_dtype))
    assert planned.exit_code in (0, 3), planned.output
    if planned.exit_code == 0:
        assert merged.exit_code == 0, merged.output
        for shard in (work / "merged").glob("*.safetensors"):
            load_file(shard)  # every shard loads
    else:
        assert merged.exit_code == 3 and merged.stderr == planned.stderr, (planned.stderr, merged.stderr)
    grafted_ok = all(tag in ("F32", "F16", "BF16") for tag in dtypes[:len(GRAFTED)]) and quantized is None
    assert (planned.exit_code == 0) == grafted_ok, (dtypes, quantized, planned.stderr)
