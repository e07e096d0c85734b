"""Graft operators (graft/engines/operators.py) against independent NumPy implementations written here, and the streamed
merge against the resident graft, bit for bit, for every operator.

The references re-derive each operator from its definition: DARE's counter-based mask (SplitMix64 of the element
index) with NumPy's own wrapping uint64 arithmetic and unsigned shifts (graft works in signed int64 with masked
shifts, in blocks), trim's top-k by a stable argsort (graft uses a
chunked radix select), and the fp32 arithmetic θ + (f(τ)·λ) of graft_rows.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from graft.core.operators import Chunk, OperatorSpec, TensorRef, dare_keep, dare_key, dare_threshold
from graft.core.recipe import Recipe
from graft.engines.merge import merge
from graft.engines.resident import ResidentGraft
from graft.errors import UsageError
from graft.evals.generation import HFBackend
from tests.test_merge import load_folder, target_name
from tests.test_resident import (
    OTHER,
    TRIAL,
    assert_same_weights,
    base_recipe,
    changed,
    loaded_state,
    merged_state,
    snapshot,
)

LAM = 0.8


# -- independent references ----------------------------------------------------------------------------------------
def np_splitmix64(key: int, index: np.ndarray) -> np.ndarray:
    """SplitMix64's i-th output for a 64-bit key, from its published definition, in wrapping uint64 arithmetic."""
    z = np.uint64(key % 2**64) + (index + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def np_dare_keep(seed: int, name: str, n: int, density: float, start: int = 0) -> np.ndarray:
    # the draw as an unsigned u = h ⊕ 2⁶³ (the signed reading of h, shifted by 2⁶³), kept below ⌊density·2⁶⁴⌋
    key = int.from_bytes(hashlib.sha256(f"graft-dare:{seed}:{name}".encode()).digest()[:8], "little")
    bound = math.floor(density * 2**64)
    if bound >= 2**64:
        return np.ones(n, dtype=bool)
    with np.errstate(over="ignore"):
        h = np_splitmix64(key, np.arange(start, start + n, dtype=np.uint64))
    return (h ^ np.uint64(2**63)) < np.uint64(bound)


def np_topk_keep(tau32: np.ndarray, density: float) -> np.ndarray:
    flat = np.abs(tau32).reshape(-1)
    k = min(flat.size, max(1, round(density * flat.size)))
    keep = np.zeros(flat.size, dtype=bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True  # ties: the lower flat index first
    return keep.reshape(tau32.shape)


def np_effective_tau(spec: dict, name: str, tau32: np.ndarray, theta32: np.ndarray,
                     origin32: np.ndarray) -> np.ndarray:
    if spec["name"] == "dare":
        keep = np_dare_keep(spec.get("seed", 0), name, tau32.size, spec["density"]).reshape(tau32.shape)
        return np.where(keep, tau32 * np.float32(1.0 / spec["density"]), np.float32(0.0))
    keep = np_topk_keep(tau32, spec["density"])
    if spec.get("elect_sign"):
        med = theta32 - origin32
        keep &= ~(((tau32 > 0) & (med < 0)) | ((tau32 < 0) & (med > 0)))
    return np.where(keep, tau32, np.float32(0.0))


SPECS = {
    "dare": {"name": "dare", "density": 0.3, "seed": 7},
    "trim": {"name": "trim", "density": 0.2},
    "trim_elect_sign": {"name": "trim", "density": 0.5, "elect_sign": True},
}


@pytest.mark.parametrize("which", list(SPECS))
def test_operator_merge_equals_numpy_reference(which: str, make_world, tmp_path: Path) -> None:
    # fp32 weights (exact reference) and τ stored in bf16: many equal |τ|, so trim's ties are exercised.
    world = make_world("causal", dtype=torch.float32, vector_dtype="bfloat16")
    spec = SPECS[which]
    recipe = Recipe.parse({"target": str(world.target), "vector": str(world.vector), "out": str(tmp_path / "m"),
                           "coefficients": {"scale": LAM}, "operator": spec,
                           "options": {"origin": str(world.origin), "chunk_size": "2KB"}})
    merged, target, origin = load_folder(merge(recipe).out), load_folder(world.target), load_folder(world.origin)
    tau = load_folder(world.vector)
    checked = dropped = total = 0
    for donor, t in tau.items():
        name = target_name("causal", donor)
        if name not in target:
            continue
        theta32, origin32, tau32 = (x.float().numpy() for x in (target[name], origin[name], t))
        effective = np_effective_tau(spec, donor, tau32, theta32, origin32)
        expected = (effective * np.float32(LAM)) + theta32
        got = merged[name].numpy()
        assert got.tobytes() == expected.astype(np.float32).tobytes(), name
        checked += 1
        dropped += int((effective == 0).sum() - (tau32 == 0).sum())
        total += tau32.size
    assert checked >= 10 and dropped > 0.3 * total


def test_dare_keeps_about_density_and_depends_on_seed_and_name() -> None:
    tau = torch.ones(200_000)
    spec = OperatorSpec.parse({"name": "dare", "density": 0.25, "seed": 3})
    op = spec.build()
    ref = TensorRef("model.layers.0.mlp.up_proj.weight", "t", tau.numel())
    key = op.prepare(ref, lambda: iter(()))  # the key is all the state: no pass over the data
    kept = op.transform(Chunk(0, tau), ref, key) != 0
    assert abs(kept.float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / tau.numel())
    assert torch.equal(op.transform(Chunk(0, tau), ref, key)[kept], torch.full((int(kept.sum()),), 4.0))
    other_seed = OperatorSpec.parse({"name": "dare", "density": 0.25, "seed": 4}).build()
    other_name = TensorRef("model.layers.1.mlp.up_proj.weight", "t", tau.numel())
    assert not torch.equal(other_seed.transform(Chunk(0, tau), ref, other_seed.prepare(ref, list)) != 0, kept)
    assert not torch.equal(op.transform(Chunk(0, tau), other_name, op.prepare(other_name, list)) != 0, kept)
    # density 1 keeps everything, unscaled
    full = OperatorSpec.parse({"name": "dare", "density": 1.0}).build()
    assert torch.equal(full.transform(Chunk(0, tau), ref, full.prepare(ref, list)), tau)


@pytest.mark.parametrize("step", [1, 7, 4097, 65_537, 100_003])
def test_dare_mask_is_the_numpy_reference_whatever_the_chunks(step: int) -> None:
    # odd chunk sizes, across graft's own 2¹⁶-element hashing blocks, and indices past 2³² (a huge tensor's tail)
    op = OperatorSpec.parse({"name": "dare", "density": 0.37, "seed": 5}).build()
    ref = TensorRef("model.layers.3.self_attn.q_proj.weight", "t", 2**33)
    key = op.prepare(ref, list)
    for origin in (0, 2**32 - 150_000):
        tau = torch.ones(300_000 if step > 100 else 3_000)
        got = torch.cat([op.transform(Chunk(origin + i, tau[i:i + step]), ref, key) != 0
                         for i in range(0, tau.numel(), step)])
        expected = np_dare_keep(5, ref.donor, tau.numel(), 0.37, start=origin)
        assert np.array_equal(got.numpy(), expected)


def test_dare_keep_probability_is_exact_at_the_threshold() -> None:
    # P(keep) = ⌊density·2⁶⁴⌋ / 2⁶⁴: the draws are uniform on the signed int64 range, kept below the threshold
    assert dare_threshold(1.0) is None and dare_threshold(0.5) == 0
    assert dare_threshold(0.25) == -(2**62) and dare_threshold(2.0**-64) == -(2**63) + 1
    key = dare_key(0, "w")
    assert dare_keep(key, 0, 10, 1.0, torch.device("cpu")).all()
    assert not dare_keep(key, 0, 100_000, 2.0**-64, torch.device("cpu")).any()
    keep = dare_keep(key, 0, 1_000_000, 0.5, torch.device("cpu"))
    assert abs(keep.float().mean().item() - 0.5) < 4 * 0.5 / math.sqrt(keep.numel())


@pytest.mark.parametrize("density", [1e-4, 0.1, 0.37, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("step", [7, 1000, 10**6])
def test_trim_threshold_is_exact_with_ties_whatever_the_chunks(density: float, step: int) -> None:
    generator = torch.Generator().manual_seed(11)
    # few distinct magnitudes (heavy ties), both signs, zeros and a -0.0
    tau = (torch.randint(-6, 7, (3001,), generator=generator).float() / 4).to(torch.bfloat16)
    tau[5] = -0.0
    op = OperatorSpec.parse({"name": "trim", "density": density}).build()
    ref = TensorRef("v", "t", tau.numel())

    def chunks():
        for start in range(0, tau.numel(), step):
            yield Chunk(start, tau[start:start + step])

    state = op.prepare(ref, chunks)
    got = torch.cat([op.transform(c, ref, state) for c in chunks()])
    keep = np_topk_keep(tau.float().numpy(), density)
    assert np.array_equal(got.numpy(), np.where(keep, tau.float().numpy(), np.float32(0.0)))
    assert int((got != 0).sum()) <= round(density * tau.numel()) or density == 1e-4


def test_operator_parameters_are_validated_with_the_field_named(tmp_path: Path) -> None:
    bad = tmp_path / "recipe.yaml"
    for text, message in [
        ("operator: {name: dare, density: 1.5}", "recipe.yaml: operator.density: must be in (0, 1], got 1.5"),
        ("operator: dare", "operator.density: missing (required)"),
        ("operator: {name: dare, density: 0.5, p: 1}", "operator.p: unknown field"),
        ("operator: {name: ties}", "operator.name: unknown operator 'ties'; known: linear, orthogonal, dare, trim"),
        ("operator: {name: trim, density: 0.5, elect_sign: true}", "operator trim needs options.origin"),
        ("operator: {name: dare, density: 0.5}\noptions: {orthogonalize: true, origin: o}", "disagree"),
    ]:
        bad.write_text(text + "\n")
        with pytest.raises(UsageError) as caught:
            Recipe.from_yaml(bad)
        assert message in str(caught.value), (text, str(caught.value))
    # the legacy spelling and the new one name the same operator; a bare name is written back as a bare name
    legacy = Recipe.parse({"options": {"origin": "o", "orthogonalize": True}})
    assert legacy.operator_spec == Recipe.parse({"operator": "orthogonal", "options": {"origin": "o"}}).operator_spec
    assert "operator: linear\n" in Recipe.parse({"operator": "linear"}).to_yaml()
    assert "operator:" not in Recipe().to_yaml()  # recipes without the key dump as before
    assert Recipe().operator_spec == OperatorSpec.parse("linear")  # no key: linear, equal to the named one


# -- merge = resident, bit for bit ----------------------------------------------------------------------------------
EVERY = {"linear": "linear", "orthogonal": "orthogonal", **SPECS}


@pytest.mark.parametrize("which", list(EVERY))
def test_resident_equals_merge_for_every_operator(which: str, make_world, tmp_path: Path) -> None:
    # bf16 weights and τ, a grown vocabulary, and small merge chunks (pre-passes summed over several chunks)
    world = make_world("llava", dtype=torch.bfloat16, extra_vocab=8)
    recipe = base_recipe(world, origin=str(world.origin), chunk_size="2KB").updated(operator=EVERY[which])
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", text_only=True) as resident:
        resident.apply(TRIAL)
        state = snapshot(resident)
        resident.apply(OTHER)
        other = snapshot(resident)
    assert_same_weights(state, merged_state(recipe, TRIAL, tmp_path / "a", "llava"))
    assert_same_weights(other, merged_state(recipe, OTHER, tmp_path / "b", "llava"))
    if which != "linear":
        assert changed(state, merged_state(base_recipe(world), TRIAL, tmp_path / "plain", "llava"))


def test_resident_switches_operator_in_place(make_world, tmp_path: Path) -> None:
    world = make_world("llava", dtype=torch.bfloat16, extra_vocab=8)
    recipe = base_recipe(world, origin=str(world.origin), chunk_size="2KB").updated(operator="orthogonal")
    with ResidentGraft.from_recipe(recipe, load=HFBackend.load, device="cpu", text_only=True) as resident:
        for which in ("trim_elect_sign", "dare", "linear"):
            resident.set_operator(OperatorSpec.parse(EVERY[which]))
            resident.apply(TRIAL)
            assert resident.recipe(TRIAL).operator_spec == OperatorSpec.parse(EVERY[which])
            assert_same_weights(snapshot(resident), merged_state(resident.recipe(TRIAL), TRIAL,
                                                                 tmp_path / which, "llava"))
    plain = base_recipe(world, chunk_size="2KB")
    with ResidentGraft.from_recipe(plain, load=HFBackend.load, device="cpu", text_only=True) as resident, \
            pytest.raises(UsageError, match="uses the origin"):
        resident.set_operator(OperatorSpec.parse("orthogonal"))


# -- a search that chooses the operator ------------------------------------------------------------------------------
class ResidentScorer:
    """Grafts each trial on a real `ResidentGraft` (switching operators in place, as `SuiteScorer` does) and keeps
    the weights it set; the scores favour DARE and, among DARE trials, a higher density (so the best trial is one)."""

    def __init__(self, base: Recipe):
        from graft.search.evaluation import trial_recipe

        self.trial_recipe = trial_recipe
        self.base = base
        self.resident = ResidentGraft.from_recipe(base.updated(operator="orthogonal"), load=HFBackend.load,
                                                  device="cpu", text_only=True)
        self.weights: dict[str, dict[str, torch.Tensor]] = {}

    def score(self, c, stage, *, operator=None) -> dict[str, float]:
        recipe = self.trial_recipe(self.base, c, operator)
        self.resident.set_operator(recipe.operator_spec)
        self.resident.apply(c)
        self.weights[recipe.model_dump_json()] = snapshot(self.resident)
        spec = recipe.operator_spec
        density = getattr(spec.params, "density", 0.0)
        safety, medical = (0.9, 0.6 + 0.1 * density) if spec.name == "dare" else (0.1 + 0.1 * c.scale, 0.6)
        return {t: safety if t == "catqa" else medical for t in stage.tasks}


def test_search_chooses_the_operator_and_its_recipe_merges_to_the_trial_weights(make_world, tmp_path: Path) -> None:
    from graft.search import run_search
    from tests.test_search import eval_file, load_study, space_file

    world = make_world("causal", dtype=torch.float32)
    base = Recipe.parse({"target": str(world.target), "vector": str(world.vector),
                         "options": {"origin": str(world.origin), "chunk_size": "2KB"}})
    space = space_file(tmp_path, "graft_space: 1\nsampler: tpe\nscale: {low: 0.0, high: 1.5}\n"
                       "operator:\n  choice: [linear, orthogonal, dare]\n"
                       "  dare: {density: {low: 0.2, high: 0.9}, seed: 3}\nbaselines: {uniform: [1.0]}\n")
    scorer = ResidentScorer(base)
    out = tmp_path / "out"
    try:
        run_search(space=space, eval_config=eval_file(tmp_path), recipe=base, out=out, scorer=scorer, trials=12,
                   seed=0)
    finally:
        scorer.resident.close()
    study = load_study(out)
    drawn = {t.params.get("operator") for t in study.trials}
    assert {"linear", "orthogonal", "dare"} <= drawn
    for t in study.trials:  # the density is a parameter of DARE trials only
        assert ("dare.density" in t.params) == (t.params["operator"] == "dare"), t.params
    best = Recipe.from_yaml(out / "best_recipe.yaml")
    best_trial = max((t for t in study.trials if t.params["operator"] == "dare"),
                     key=lambda t: t.params["dare.density"])
    assert best.operator_spec == OperatorSpec.parse({"name": "dare", "density": best_trial.params["dare.density"],
                                                     "seed": 3})
    assert "operator:\n  name: dare\n  density: " in (out / "best_recipe.yaml").read_text()
    merged = tmp_path / "merged"
    from typer.testing import CliRunner

    from graft.cli import app

    cli = CliRunner().invoke(app, ["merge", "--recipe", str(out / "best_recipe.yaml"), "--out", str(merged), "-q"])
    assert cli.exit_code == 0, cli.output
    trial_weights = scorer.weights[best.model_copy(update={"description": None}).model_dump_json()]
    reloaded = loaded_state(merged, "causal")
    assert_same_weights(trial_weights, reloaded)


# -- the command line, plan and model card read the operator's declared parameters ----------------------------------
def test_cli_operator_flags_plan_and_model_card(make_world, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from graft.cli import app

    world = make_world("causal", dtype=torch.float32)
    runner = CliRunner()
    common = ["--target", str(world.target), "--vector", str(world.vector), "--scale", "0.8"]
    flags = runner.invoke(app, ["merge", *common, "--operator", "dare", "--operator-param", "density=0.3",
                                "--operator-param", "seed=7", "--out", str(tmp_path / "flags"), "-q"])
    assert flags.exit_code == 0, flags.output
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"target: {world.target}\nvector: {world.vector}\ncoefficients: {{scale: 0.8}}\n"
                      "operator: {name: dare, density: 0.3, seed: 7}\n")
    from_file = runner.invoke(app, ["merge", "--recipe", str(recipe), "--out", str(tmp_path / "file"), "-q"])
    assert from_file.exit_code == 0, from_file.output
    assert (tmp_path / "flags" / "model.safetensors").read_bytes() == \
        (tmp_path / "file" / "model.safetensors").read_bytes()
    card = (tmp_path / "flags" / "README.md").read_text()
    assert "- operator: dare (density 0.3, seed 7): drops each entry of τ" in card
    stored = Recipe.from_yaml(tmp_path / "flags" / "graft_recipe.yaml")
    assert stored.operator_spec == OperatorSpec.parse({"name": "dare", "density": 0.3, "seed": 7})
    # a flag over the recipe's operator keeps its other parameters; another operator starts afresh
    changed_seed = runner.invoke(app, ["plan", "--recipe", str(recipe), "--operator-param", "seed=8", "--json",
                                       str(tmp_path / "plan.json")])
    assert changed_seed.exit_code == 0, changed_seed.output
    assert "dare (density 0.3, seed 8)" in changed_seed.output
    assert json.loads((tmp_path / "plan.json").read_text())["operator"] == {"name": "dare", "density": 0.3,
                                                                            "seed": 8}
    for extra, message in [(["--operator-param", "density=1.5"], "operator.density: must be in (0, 1], got 1.5"),
                           (["--operator", "trim"], "operator.density: missing (required)"),
                           (["--operator", "ties"], "unknown operator 'ties'"),
                           (["--operator-param", "density"], "--operator-param 'density': expected the form"),
                           (["--operator", "orthogonal"], "needs options.origin"),
                           (["--operator", ""], "--operator '': give an operator's name"),
                           (["--operator-param", "seed=true"], "operator.seed: must be an integer, got True")]:
        bad = runner.invoke(app, ["merge", "--recipe", str(recipe), *extra, "--out", str(tmp_path / "bad")])
        assert bad.exit_code == 2 and message in bad.output, (extra, bad.output)
        assert not (tmp_path / "bad").exists()
    # the legacy flag still works and names the operator in the card
    legacy = runner.invoke(app, ["merge", *common, "--origin", str(world.origin), "--orthogonalize",
                                 "--out", str(tmp_path / "legacy"), "-q"])
    assert legacy.exit_code == 0, legacy.output
    assert "- operator: orthogonal: τ projected off" in (tmp_path / "legacy" / "README.md").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("which", list(SPECS))
def test_cuda_merge_equals_cpu_merge_for_every_operator(which: str, make_world, tmp_path: Path) -> None:
    world = make_world("llava", extra_vocab=8)
    outputs = []
    for device in ("cpu", "cuda"):
        recipe = Recipe.parse({"target": str(world.target), "vector": str(world.vector), "operator": SPECS[which],
                               "out": str(tmp_path / device), "coefficients": {"scale": LAM},
                               "options": {"origin": str(world.origin), "device": device, "chunk_size": "2KB"}})
        outputs.append(merge(recipe).out)
    for file in sorted(outputs[0].glob("*.safetensors")):
        assert file.read_bytes() == (outputs[1] / file.name).read_bytes(), file.name


def test_non_finite_results_name_the_operator_and_params_the_operator_they_belong_to(make_world,
                                                                                   tmp_path: Path) -> None:
    """An operator whose f(τ) is not finite is named as the cause (not λ); a parameter given without --operator is
    refused as one the recipe's operator does not have, saying how to pick another."""
    import torch

    from graft.core import operators
    from graft.core.recipe import Recipe
    from graft.engines.merge import merge
    from graft.errors import IncompatibleError

    @operators.register
    class Broken(operators.GraftOperator[operators.OperatorParams]):
        name = "broken_for_test"
        Params = operators.OperatorParams
        summary = "NaN everywhere"

        def transform(self, chunk, tensor, state):
            return torch.full_like(chunk.tau, float("nan"), dtype=torch.float32)

    world = make_world("causal")
    try:
        recipe = Recipe.parse({"target": str(world.target), "vector": str(world.vector), "out": str(tmp_path / "o"),
                               "operator": "broken_for_test"}, source="test")
        with pytest.raises(IncompatibleError, match="operator broken_for_test made f\\(τ\\) non-finite"):
            merge(recipe)
        assert not (tmp_path / "o").exists()
    finally:
        operators.OPERATORS.pop("broken_for_test", None)
    from typer.testing import CliRunner

    from graft.cli import app

    bad = CliRunner().invoke(app, ["plan", "-t", str(world.target), "--vector", str(world.vector),
                                   "--operator-param", "density=0.5"])
    assert bad.exit_code == 2 and "operator linear (the recipe's operator, or the default) has no parameter " \
        "'density'" in bad.stderr and "--operator NAME" in bad.stderr, bad.output
