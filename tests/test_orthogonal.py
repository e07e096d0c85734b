"""The orthogonal variant: τ loses its component along τ_med = θ_target − θ_origin, per tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from graft.core.recipe import Recipe
from graft.engines.merge import merge
from tests.test_merge import load_folder, target_name


def test_orthogonalized_graft_matches_float64_reference(make_world, tmp_path: Path) -> None:
    world = make_world("llava", dtype=torch.float32, vector_dtype="float32")
    recipe = Recipe.parse({"target": str(world.target), "vector": str(world.vector), "out": str(tmp_path / "m"),
                           "coefficients": {"scale": 0.8},
                           "options": {"origin": str(world.origin), "orthogonalize": True, "chunk_size": "2KB"}})
    out = merge(recipe).out
    merged, target, origin = load_folder(out), load_folder(world.target), load_folder(world.origin)
    tau = load_folder(world.vector)
    checked = 0
    for donor, t in tau.items():
        name = target_name("llava", donor)
        theta, theta_o = target[name].double().numpy(), origin[name].double().numpy()
        tau_med = theta - theta_o
        tau64 = t.double().numpy()
        c = float((tau64 * tau_med).sum() / (tau_med * tau_med).sum())
        expected = theta + 0.8 * (tau64 - c * tau_med)
        got = merged[name].double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=name)
        # What was added is orthogonal to the medical direction (up to fp32 rounding).
        added = got - theta
        cosine = (added * tau_med).sum() / (np.linalg.norm(added) * np.linalg.norm(tau_med))
        assert abs(cosine) < 1e-3, name
        checked += 1
    assert checked == len(tau)
    for name in target.keys() - {target_name("llava", d) for d in tau}:
        assert torch.equal(merged[name], target[name])


def test_origin_given_to_an_operator_that_ignores_it_is_said(make_world, tmp_path: Path) -> None:
    """`--origin` with linear: the plan runs (a script may pass it to every operator) and says it is not read;
    with orthogonal the same flag is used and nothing is said."""
    from typer.testing import CliRunner

    from graft.cli import app

    world = make_world("causal")
    args = ["plan", "-t", str(world.target), "--vector", str(world.vector), "--origin", str(world.origin), "-q"]
    linear = CliRunner().invoke(app, [*args, "--operator", "linear"])
    assert linear.exit_code == 0, linear.output
    assert "operator linear does not use the origin" in linear.stderr
    orthogonal = CliRunner().invoke(app, [*args, "--operator", "orthogonal"])
    assert orthogonal.exit_code == 0, orthogonal.output
    assert "origin" not in orthogonal.stderr


def test_origin_equal_to_target_is_a_warning(make_world) -> None:
    """τ_med = θ_target − θ_target = 0: orthogonal would graft as linear without a word; --strict refuses it."""
    from typer.testing import CliRunner

    from graft.cli import app

    world = make_world("causal")
    args = ["plan", "-t", str(world.target), "--vector", str(world.vector), "--operator", "orthogonal",
            "--origin", str(world.target), "-q"]
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0 and "the origin is the target itself" in plain.stderr, plain.output
    strict = CliRunner().invoke(app, [*args, "--strict"])
    assert strict.exit_code == 4 and "the origin is the target itself" in strict.stderr, strict.output
