"""Parity with mergekit: on a text-only merge, graft's θ + λ(aligned − base) equals mergekit's linear merge.

mergekit is the tool people already trust for this arithmetic, so agreeing with it (on the same three
checkpoints) is the cheapest end-to-end check that graft reads, maps, computes and writes every tensor right.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

mergekit_config = pytest.importorskip("mergekit.config", reason="mergekit is not installed (pip install -e .[dev])")
mergekit_merge = pytest.importorskip("mergekit.merge", reason="mergekit is not installed (pip install -e .[dev])")

from graft.core.recipe import Recipe  # noqa: E402
from graft.engines.extract import extract_vector  # noqa: E402
from graft.engines.merge import merge  # noqa: E402
from graft.testing.layouts import TextSpec, build_target, build_text_pair, load_state_dict_dir  # noqa: E402

LAM = 0.7
# Tiny on purpose (the whole test runs in a few seconds): parity is about the arithmetic and the key set.
SPEC = TextSpec(family="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=4)
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """float32 base/aligned/target, so both tools compute and store in fp32 and no bf16 rounding hides a bug."""
    root = tmp_path_factory.mktemp("parity")
    base, aligned = build_text_pair(root, SPEC, dtype=torch.float32)
    target = build_target("causal", root, aligned, SPEC, dtype=torch.float32)
    assert isinstance(target, Path)
    return base, aligned, target


def _run_mergekit(base: Path, aligned: Path, target: Path, out: Path) -> None:
    """mergekit's linear merge with weights (1, λ, −λ) and no normalisation: θ_t + λ·θ_a − λ·θ_b in fp32."""
    config = mergekit_config.MergeConfiguration.model_validate({
        "merge_method": "linear",
        "models": [
            {"model": str(target), "parameters": {"weight": 1.0}},
            {"model": str(aligned), "parameters": {"weight": LAM}},
            {"model": str(base), "parameters": {"weight": -LAM}},
        ],
        "parameters": {"normalize": False},
        "dtype": "float32",
        "out_dtype": "float32",
    })
    options = mergekit_merge.MergeOptions(cuda=False, copy_tokenizer=False, write_model_card=False, quiet=True)
    mergekit_merge.run_merge(config, str(out), options=options)


def test_mergekit_linear_equals_graft(trio: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, aligned, target = trio
    vector = extract_vector(base, aligned, tmp_path / "vector", dtype="float32", hash_sources=False).out
    recipe = Recipe.parse({"target": str(target), "vector": str(vector), "out": str(tmp_path / "graft"),
                           "coefficients": {"scale": LAM}, "options": {"device": "cpu"}})
    ours = load_state_dict_dir(merge(recipe).out)
    _run_mergekit(base, aligned, target, tmp_path / "mergekit")
    theirs = load_state_dict_dir(tmp_path / "mergekit")

    assert set(ours) == set(theirs), f"key sets differ: only graft {set(ours) - set(theirs)}, " \
                                     f"only mergekit {set(theirs) - set(ours)}"
    inputs = [load_state_dict_dir(p) for p in (target, aligned, base)]
    for name, mine in ours.items():
        assert mine.dtype == theirs[name].dtype == torch.float32, name
        # Same real-number result, different fp32 rounding paths: mergekit accumulates ((0 + t) + λa) + (−λb)
        # (three rounded steps, addcmul_), graft computes t + λ·fl(a − b) (three rounded steps in another order).
        # Each rounding errs by ≤ ½ ulp of an intermediate no larger than ~max(|t|, |a|, |b|)·(1 + 2λ), so the two
        # results differ by at most a few ulps of the largest input magnitude (measured: ≤ 0.96·eps·max|input|).
        # 4·eps·max|input| (~1e-7 for these weights) bounds that with margin, yet any wrong λ, sign, mapping or
        # dropped term shows up as ≥ 1e-3 (λ·τ is ~2e-2 here). rtol=0: outputs near zero get no relative pass.
        scale = max(float(t[name].abs().max()) for t in inputs if name in t)
        torch.testing.assert_close(mine, theirs[name], rtol=0.0, atol=4 * EPS32 * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")
        # The graft must actually have changed the tensor (otherwise parity would be vacuous).
        assert not torch.equal(mine, inputs[0][name]), f"{name}: unchanged by the graft"
