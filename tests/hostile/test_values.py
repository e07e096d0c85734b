# ruff: noqa: F811 (the fixtures of tests/test_bad_input.py are imported, and tests take them by name)
"""Nothing silently wrong is ever written: non-finite or absurd coefficients, NaN/Inf in the sources, vector shards
that contradict their manifest, plan warnings that a merge must not swallow, memory that --chunk-size must bound,
and a search whose best answer is the target itself.

Each case goes through the real CLI: the documented exit code, one `error:` line naming the file/tensor/field, no
traceback, the inputs byte-for-byte unchanged, no output or staging folder left.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from graft.core.arithmetic import all_finite
from graft.core.recipe import Recipe
from graft.engines.extract import extract_vector
from graft.search.config import Objective
from graft.search.outputs import write_outputs
from graft.search.study import claim, open_storage, quiet_optuna, run_worker
from tests.test_bad_input import (  # noqa: F401 (fixtures)
    NORM,
    Models,
    _rewrite_tensor,
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


def _merge_refused(m: Models, outdir: Path, code: int, *args: object, names: tuple[str, ...] = (),
                   out: str = "merged") -> str:
    before = tree_hash(m.target, m.vector)
    line = assert_error(cli(*merge_args(m.target, m.vector, outdir / out, *args)), code, *names)
    assert_no_output(outdir / out)
    assert tree_hash(m.target, m.vector) == before
    return line


# -- 5. non-finite and absurd coefficients ---------------------------------------------------------------------------
@pytest.mark.parametrize(("flags", "field"), [
    (("--scale", "nan"), "coefficients.scale"),
    (("--scale", "inf"), "coefficients.scale"),
    (("--scale", "-inf"), "coefficients.scale"),
    (("--layers", "1,nan,1,1"), "coefficients.layers.1"),
    (("--blocks", "1,inf"), "coefficients.blocks.1"),
    (("--control-points", "0,NaN"), "coefficients.control_points.1"),
    (("--group", "mlp=nan"), "coefficients.groups.mlp"),
])
def test_non_finite_coefficient_flags_are_refused(m: Models, outdir: Path, flags: tuple[str, ...], field: str) -> None:
    line = _merge_refused(m, outdir, 2, *flags, names=(field, "must be a finite number"))
    assert "Value error" not in line and "Input should" not in line
    assert_error(cli(*plan_args(m.target, m.vector, *flags)), 2, field)


@pytest.mark.parametrize(("body", "field"), [
    ("coefficients: {scale: .nan}\n", "coefficients.scale"),
    ("coefficients: {scale: .inf}\n", "coefficients.scale"),
    ("coefficients: {scale: 'nan'}\n", "coefficients.scale"),
    ("coefficients: {scale: -.Inf}\n", "coefficients.scale"),
    ("coefficients: {layers: [1, 1, .nan, 1]}\n", "coefficients.layers.2"),
    ("coefficients: {blocks: [.inf]}\n", "coefficients.blocks.0"),
    ("coefficients: {control_points: ['inf', 1]}\n", "coefficients.control_points.0"),
    ("coefficients: {groups: {attn: .nan}}\n", "coefficients.groups.attn"),
])
def test_non_finite_coefficients_in_a_recipe_are_refused(m: Models, outdir: Path, tmp_path: Path, body: str,
                                                         field: str) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"target: {m.target}\nvector: {m.vector}\n{body}")
    before = tree_hash(m.target, m.vector, tmp_path / "recipe.yaml")
    line = assert_error(cli("merge", "-r", recipe, "-o", outdir / "merged", "-q"), 2, str(recipe), field)
    assert line == f"error: {recipe}: {field}: must be a finite number, got {line.rsplit(' ', 1)[-1]}"
    assert line.rsplit(" ", 1)[-1] in ("nan", "inf", "-inf")
    assert_no_output(outdir / "merged")
    assert tree_hash(m.target, m.vector, tmp_path / "recipe.yaml") == before


def test_finite_factors_whose_product_overflows_are_refused(m: Models, outdir: Path) -> None:
    _merge_refused(m, outdir, 2, "--scale", "1e200", "--group", "mlp=1e200", names=("λ for", "group mlp", "overflows"))


@pytest.mark.parametrize("scale", ["1e40", "-1e39", "1e300"])
def test_a_finite_lambda_that_overflows_the_output_writes_nothing(m: Models, outdir: Path, scale: str) -> None:
    """|λ| far beyond any graft: warned about, and the merged tensor that becomes non-finite stops the merge."""
    result = cli(*merge_args(m.target, m.vector, outdir / "merged", "--scale", scale))
    assert result.exit_code == 4, result.output
    lines = result.stderr.rstrip("\n").split("\n")
    assert lines[0].startswith("warning: λ = ") and "far outside what a graft uses" in lines[0]
    assert lines[-1].startswith("error: tensor ") and "not finite" in lines[-1] and "Traceback" not in result.output
    assert_no_output(outdir / "merged")
    # The abandoned shard's descriptor is closed too (a long-lived process must not leak one per failure).
    open_files = [os.readlink(fd) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink()]
    assert not [f for f in open_files if str(outdir) in f], open_files


def test_a_large_lambda_is_warned_about_and_strict_refuses_it(m: Models, outdir: Path) -> None:
    result = cli(*merge_args(m.target, m.vector, outdir / "merged", "--scale", "20"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "λ = 20" in warnings[0] and "|λ| > 10" in warnings[0]
    _merge_refused(m, outdir, 4, "--scale", "20", "--strict", names=("λ = 20", "--strict"), out="strict")


# -- 6. NaN / Inf in the sources -----------------------------------------------------------------------------------
def _poison(folder: Path, name: str, value: float, dtype: torch.dtype | None = None) -> Path:
    """Put one non-finite value into a tensor of a safetensors folder (single file or shards)."""
    index = folder / "model.safetensors.index.json"
    shard = shard_of(folder, name) if index.exists() else next(folder.glob("*.safetensors"))
    tensors = load_file(shard)
    tensor = tensors[name].clone()
    tensor.view(-1)[tensor.numel() // 2] = value
    tensors[name] = tensor
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_extract_refuses_non_finite_sources(m: Models, outdir: Path, value: float) -> None:
    shard = _poison(m.aligned, NORM, value)
    before = tree_hash(m.base, m.aligned)
    line = assert_error(cli(*extract_args(m.base, m.aligned, outdir / "vec")), 3, str(shard), NORM, "NaN or infinite")
    assert "--allow-nonfinite" in line
    assert_no_output(outdir / "vec")
    assert tree_hash(m.base, m.aligned) == before
    # Asked for explicitly, the vector is written and says what it holds.
    result = cli(*extract_args(m.base, m.aligned, outdir / "vec", "--allow-nonfinite"))
    assert result.exit_code == 0, result.output
    assert not torch.isfinite(load_file(outdir / "vec" / "vector.safetensors")[NORM]).all()


def test_extract_refuses_a_difference_that_overflows_its_storage_dtype(m: Models, outdir: Path) -> None:
    """Finite float16 sources whose difference does not fit float16 (storage follows each source's dtype)."""
    for folder, sign in ((m.aligned, 1.0), (m.base, -1.0)):
        shard = shard_of(folder, NORM)
        tensors = load_file(shard)
        tensors[NORM] = torch.full(tensors[NORM].shape, sign * 60000.0, dtype=torch.float16)
        save_file(tensors, shard, metadata={"format": "pt"})
    line = assert_error(cli(*extract_args(m.base, m.aligned, outdir / "vec")), 4, NORM, "not finite", "--dtype float32")
    assert "F16" in line
    assert_no_output(outdir / "vec")
    result = cli(*extract_args(m.base, m.aligned, outdir / "vec", "--dtype", "float32"))
    assert result.exit_code == 0, result.output
    assert load_file(outdir / "vec" / "vector.safetensors")[NORM].eq(120000.0).all()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_merge_refuses_a_non_finite_target_tensor(m: Models, outdir: Path, value: float) -> None:
    shard = _poison(m.target, TARGET_MLP, value)
    _merge_refused(m, outdir, 3, names=(str(shard), TARGET_MLP, "NaN or infinite"))


def test_merge_refuses_a_non_finite_vector_tensor(m: Models, outdir: Path) -> None:
    shard = _poison(m.vector, MLP, float("nan"))
    _merge_refused(m, outdir, 3, names=(str(shard), MLP, "NaN or infinite"))


@pytest.mark.parametrize("operator", [("--operator", "dare", "--operator-param", "density=0.05"),
                                      ("--operator", "trim", "--operator-param", "density=0.05")],
                         ids=["dare", "trim"])
def test_a_non_finite_entry_an_operator_would_drop_is_still_refused(m: Models, outdir: Path,
                                                                   operator: tuple[str, ...]) -> None:
    """dare and trim select entries away: a NaN they dropped would never show in the result, so their τ is checked
    before they run (the result alone is checked for linear and orthogonal)."""
    shard = _poison(m.vector, MLP, float("nan"))
    _merge_refused(m, outdir, 3, *operator, names=(str(shard), MLP, "NaN or infinite"))


def test_a_non_finite_origin_tensor_is_named(m: Models, outdir: Path) -> None:
    shard = _poison(m.origin, TARGET_MLP, float("inf"))
    _merge_refused(m, outdir, 3, "--operator", "orthogonal", "--origin", m.origin,
                   names=(str(shard), "origin tensor", TARGET_MLP, "NaN or infinite"))


@settings(derandomize=True, max_examples=300, deadline=None)
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=64),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]))
def test_all_finite_agrees_with_isfinite(values: list[float], dtype: torch.dtype) -> None:
    """The summing check is exact: finite values whose sum overflows are still finite, one NaN or inf is not."""
    tensor = torch.tensor(values, dtype=torch.float32).to(dtype)
    assert all_finite(tensor) == bool(torch.isfinite(tensor).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64,
                                   torch.float8_e4m3fn])
@pytest.mark.parametrize("size", [1, 7, 65, 4099, 2**20 + 3])
def test_all_finite_finds_one_bad_element_anywhere_in_a_long_tensor(dtype: torch.dtype, size: int) -> None:
    """Vectorised reductions have blocks and tails: a NaN or inf first, last or in the middle is found in each."""
    finite = (torch.randn(size, generator=torch.Generator().manual_seed(size)) * 1e4).to(dtype)
    assert all_finite(finite)
    for where in sorted({0, size // 2, size - 1}):
        for bad in (float("nan"),) if dtype == torch.float8_e4m3fn else (float("nan"), float("inf"), float("-inf")):
            poisoned = finite.clone()  # (float8_e4m3fn has no infinity)
            poisoned[where] = bad
            assert not all_finite(poisoned), (where, bad)


def test_all_finite_when_the_sum_overflows() -> None:
    huge = torch.full((1000,), 3e38, dtype=torch.float32)
    assert math.isinf(float(huge.sum())) and all_finite(huge)
    assert all_finite(huge.to(torch.bfloat16)) and not all_finite(torch.cat([huge, torch.tensor([float("nan")])]))


def test_merge_refuses_a_cast_that_overflows(m: Models, outdir: Path) -> None:
    """--dtype float16 on a bf16 value beyond float16's range: the output would hold inf."""
    shard = _poison(m.target, TARGET_MLP, 1e30)
    _merge_refused(m, outdir, 4, "--dtype", "float16", names=(TARGET_MLP, "float16"))
    assert shard.exists()


# -- 8. vector shards that contradict vector.json, non-float tensors ----------------------------------------------
def _retype_vector(m: Models, name: str, dtype: torch.dtype) -> Path:
    shard = m.vector / "vector.safetensors"
    tensors = load_file(shard)
    tensors[name] = tensors[name].float().round().to(dtype) + 7
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


@pytest.mark.parametrize("dtype", [torch.int16, torch.float16, torch.float32])
def test_a_vector_shard_whose_dtype_differs_from_the_manifest(m: Models, outdir: Path, dtype: torch.dtype) -> None:
    shard = _retype_vector(m, MLP, dtype)
    _merge_refused(m, outdir, 3, names=(str(shard), MLP, "vector.json says BF16"))
    assert_error(cli(*plan_args(m.target, m.vector)), 3, MLP)


def test_a_vector_shard_whose_shape_differs_from_the_manifest(m: Models, outdir: Path) -> None:
    shard = m.vector / "vector.safetensors"
    tensors = load_file(shard)
    tensors[MLP] = tensors[MLP].reshape(-1)
    save_file(tensors, shard, metadata={"format": "pt"})
    _merge_refused(m, outdir, 3, names=(str(shard), MLP))


def test_a_manifest_that_declares_a_non_float_tau(m: Models, outdir: Path) -> None:
    manifest = json.loads((m.vector / "vector.json").read_text())
    manifest["tensors"][MLP]["dtype"] = "I32"
    (m.vector / "vector.json").write_text(json.dumps(manifest))
    _merge_refused(m, outdir, 3, names=(str(m.vector / "vector.json"), f"tensors.{MLP}.dtype", "floating-point"))


def test_a_grafted_target_tensor_that_is_not_floating_point(m: Models, outdir: Path) -> None:
    shard = shard_of(m.target, TARGET_MLP)
    tensors = load_file(shard)
    tensors[TARGET_MLP] = torch.zeros(tensors[TARGET_MLP].shape, dtype=torch.int16)
    save_file(tensors, shard, metadata={"format": "pt"})
    _merge_refused(m, outdir, 3, names=(str(shard), TARGET_MLP, "not floating point"))
    # Excluding it is the way out.
    result = cli(*merge_args(m.target, m.vector, outdir / "merged", "--exclude", r"layers\.1\.mlp\.up_proj"))
    assert result.exit_code == 0, result.output


# -- 7. plan warnings reach the user; --strict gates on them ------------------------------------------------------
def test_merge_prints_every_plan_warning_and_strict_turns_them_into_exit_4(m: Models, outdir: Path) -> None:
    args = ("--include", "no_such_tensor_anywhere", "--include", r"layers\.")
    result = cli(*merge_args(m.target, m.vector, outdir / "merged", *args))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == ("warning: mapping.include 'no_such_tensor_anywhere' matches no tensor of the "
                                     "target; check the regex")
    _merge_refused(m, outdir, 4, *args, "--strict", names=("no_such_tensor_anywhere", "--strict"), out="strict")
    # plan -q hides the table, not the warnings.
    result = cli(*plan_args(m.target, m.vector, "-q", "--exclude", "nothing_matches_this"))
    assert result.exit_code == 0 and "warning: mapping.exclude 'nothing_matches_this'" in result.stderr
    assert_error(cli(*plan_args(m.target, m.vector, "-q", "--exclude", "nothing_matches_this", "--strict")), 4,
                 "nothing_matches_this")


def test_a_map_rule_that_matches_no_vector_tensor_is_warned_and_strict_refuses_it(m: Models, outdir: Path) -> None:
    rule = r"^model\.layrs\.=>model.layers."  # a typo: no vector tensor is called model.layrs.*
    result = cli(*plan_args(m.target, m.vector, "-q", "--map", rule))
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(r"warning: mapping rule '^model\\.layrs\\.' => 'model.layers.' (--map) matches no "
                           "tensor of the vector (whose names look like '")
    assert line.endswith("'); check the regex")
    example = line.split("look like '")[1].split("'")[0]
    vector_names = {n for f in Path(m.vector).glob("*.safetensors") for n in load_file(f)}
    assert example in vector_names
    assert_error(cli(*plan_args(m.target, m.vector, "-q", "--map", rule, "--strict")), 4, "layrs")
    _merge_refused(m, outdir, 4, "--map", rule, "--strict", names=("layrs", "--strict"), out="strict")
    # A rule that matches is not warned about.
    result = cli(*plan_args(m.target, m.vector, "-q", "--map", r"^(model\.)=>\1"))
    assert result.exit_code == 0 and result.stderr == "", result.stderr


def test_strict_and_allow_partial_in_a_recipe(m: Models, outdir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"target: {m.target}\nvector: {m.vector}\nmapping: {{exclude: [zzz]}}\n"
                      "options: {strict: true}\n")
    assert_error(cli("merge", "-r", recipe, "-o", outdir / "merged", "-q"), 4, "zzz", "--strict")
    assert_no_output(outdir / "merged")
    assert Recipe.from_yaml(recipe).options.strict and not Recipe.from_yaml(recipe).options.allow_partial


# -- 20. --chunk-size bounds memory whatever the shape ---------------------------------------------------------------
WIDE = 16 * 2**20  # elements in the one row of the wide tensor: 64 MB in float32

_MEASURE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import graft.engines.merge, graft.engines.extract, torch  # everything imported before the baseline
    from graft.core.recipe import Recipe

    def status(key):  # kB -> MB, from the kernel's own accounting of this process's memory
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
        return int(line.split()[1]) / 1024

    # Peak RSS from here on: reset the high-water mark (ru_maxrss would also count the forking parent's pages).
    Path("/proc/self/clear_refs").write_text("5")
    baseline = status("VmRSS")
    what, a, b, out = sys.argv[1:5]
    if what == "extract":
        graft.engines.extract.extract_vector(a, b, out, hash_sources=False, chunk_size="1MB")
    else:
        graft.engines.merge.merge(Recipe(target=a, vector=b, out=out, options={"chunk_size": "1MB", "device": "cpu"}))
    print(status("VmHWM") - baseline)
""")


def _wide_model(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(1, WIDE, generator=gen),
               "model.embed_tokens.weight": torch.randn(4, 8, generator=gen)}, folder / "model.safetensors")
    return folder


def _peak_mb(*args: Path | str) -> float:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, args)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip().splitlines()[-1])


def test_chunk_size_bounds_memory_for_a_wide_tensor(tmp_path: Path) -> None:
    """A [1, 16M] float32 tensor (64 MB in one row) streamed with --chunk-size 1MB: row chunks held the whole row
    several times over (measured: about 4× the row in extract, 3× in merge); flat element chunks hold a few chunks
    (about 20–40 MB with the threads' buffers). Peak RSS above the process's own baseline, with a generous bound
    below one copy of the row."""
    base, aligned = _wide_model(tmp_path / "base", 0), _wide_model(tmp_path / "aligned", 1)
    extract_peak = _peak_mb("extract", base, aligned, tmp_path / "vector")
    merge_peak = _peak_mb("merge", base, tmp_path / "vector", tmp_path / "merged")
    assert extract_peak < 60, f"extract held {extract_peak:.0f} MB above baseline for a 64 MB row"
    assert merge_peak < 60, f"merge held {merge_peak:.0f} MB above baseline for a 64 MB row"
    # And the bytes are still right: θ + λ·τ with λ = 1 against NumPy.
    theta = load_file(base / "model.safetensors")["model.layers.0.mlp.up_proj.weight"].numpy()
    tau = load_file(tmp_path / "vector" / "vector.safetensors")["model.layers.0.mlp.up_proj.weight"].numpy()
    merged = load_file(tmp_path / "merged" / "model.safetensors")["model.layers.0.mlp.up_proj.weight"].numpy()
    np.testing.assert_array_equal(merged, theta + tau * np.float32(1.0))


# -- 18. a search whose best trial is the target itself ------------------------------------------------------------
def _trial(number: int, scale: float, safety: float) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, values=[safety],
        user_attrs={"coefficients": {"scale": scale}, "safety": safety, "medical": 0.5, "medical_drop": 0.0,
                    "baseline": "lambda0" if scale == 0 else None})
    trial.number = number
    return trial


@pytest.mark.parametrize(("best_scale", "unchanged"), [(0.0, True), (1.0, False)])
def test_a_search_whose_best_is_lambda_0_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 best_scale: float, unchanged: bool) -> None:
    other = 1.0 if best_scale == 0 else 0.0
    trials = [_trial(0, best_scale, 0.9), _trial(1, other, 0.4)]
    summary = write_outputs(tmp_path, trials, base=Recipe(), objective=Objective(), num_layers=2,
                            cells=[(0, "mlp"), (1, "attn"), (None, "embed")], meta={"study": "s"})
    assert summary["best"]["number"] == 0
    assert summary["best_is_target"] is unchanged
    assert json.loads((tmp_path / "summary.json").read_text())["best_is_target"] is unchanged
    err = capsys.readouterr().err
    assert ("λ = 0 everywhere" in err and "target unchanged" in err) is unchanged


# -- 22. a worker killed between ask() and its first heartbeat -------------------------------------------------------
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path: Path) -> None:
    """A RUNNING trial with no heartbeat row at all: Optuna never finds it stale. The worker loop must fail it after
    the grace period and run its parameters again instead of waiting on it forever."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="s")
    with quiet_optuna():
        dead = study.ask()  # ...and nothing more: no heartbeat was ever recorded
    x = dead.suggest_float("x", 0.0, 1.0)
    time.sleep(1.6)
    seen: list[float] = []

    def objective(trial: optuna.Trial) -> list[float]:
        seen.append(trial.suggest_float("x", 0.0, 1.0))
        return [seen[-1]]

    reports: list = []
    worker = threading.Thread(target=lambda: reports.append(run_worker(study, storage, objective, 2, poll_s=0.1)),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the worker waited on a trial that never sent a heartbeat"
    assert len(reports[0].ran) == 2 and x in seen  # the silent trial's parameters ran again
    assert study.trials[dead.number].state == optuna.trial.TrialState.FAIL
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2


def test_a_live_trial_without_heartbeat_inside_the_grace_period_is_left_alone(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", heartbeat_interval=60)
    study = optuna.create_study(storage=storage, study_name="s")
    with quiet_optuna():
        fresh = study.ask()
    assert claim(study, storage, 1) == "wait"  # the budget's one trial is (just) running elsewhere
    assert storage.get_trial(fresh._trial_id).state == optuna.trial.TrialState.RUNNING


def test_extract_python_api_refuses_a_bad_size_before_reading(m: Models, outdir: Path) -> None:
    with pytest.raises(Exception, match="--shard-size: 'huge' is not a size") as info:
        extract_vector(m.base, m.aligned, outdir / "vec", shard_size="huge")
    assert getattr(info.value, "exit_code", None) == 2
    assert_no_output(outdir / "vec")
