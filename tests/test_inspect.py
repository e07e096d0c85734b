"""Inspection: scores against a NumPy reference from safetensors loads, λ tables against the recipe rule, study
importances from a real Optuna study, the report folder, the CLI's errors, and the example notebook."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from optuna.storages.journal import JournalFileBackend
from PIL import Image
from typer.testing import CliRunner

from graft.cli import app
from graft.core.recipe import Coefficients, MappingRules, Recipe
from graft.engines.plan import build_plan
from graft.errors import InputError, OutputError, UsageError
from graft.inspect import (
    combine,
    lambdas,
    layer_scores,
    param_target,
    study_coefficients,
    study_importance,
    tensor_scores,
    write_report,
)
from graft.inspect.scores import inspection_plan, layer_table, score_tensors, tensor_table
from graft.inspect.study import layers_of
from graft.io.checkpoint import Checkpoint
from graft.io.guard import MARKER
from graft.io.vector_folder import SafetyVector
from graft.testing.layouts import LAYOUTS, load_state_dict_dir

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- an independent reference -------------------------------------------------------------------------------------
def _f64(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float64).numpy()


def _target_name(layout: str, vector_name: str) -> str:
    """Where the toy layouts put a donor tensor (the donor is a causal LM: model.* and lm_head.weight)."""
    lay = LAYOUTS[layout]
    if vector_name == "lm_head.weight":
        return lay.head_name or vector_name
    return lay.lm_prefix + vector_name.removeprefix("model.")


def _layer_group(name: str) -> tuple[int | None, str]:
    layer = re.search(r"layers\.(\d+)\.", name)
    group = ("embed" if "embed_tokens" in name else "head" if "lm_head" in name else "norm" if "norm" in name
             else "attn" if "self_attn" in name else "mlp" if ".mlp." in name else "other")
    return (int(layer.group(1)) if layer else None), group


def _safelora(v: np.ndarray, delta: np.ndarray) -> float:
    """Hsu et al.: C = V Vᵀ / ‖V‖_F acting on the (out, in) weight from the left; cosine of C·ΔW with ΔW."""
    projected = (v @ v.T / np.linalg.norm(v)) @ delta
    return float(np.vdot(projected, delta) / (np.linalg.norm(projected) * np.linalg.norm(delta)))


def reference_tensors(world, *, with_target: bool = True, with_origin: bool = True) -> pd.DataFrame:
    tau = load_state_dict_dir(world.vector)
    target = load_state_dict_dir(world.target) if with_target else None
    origin = load_state_dict_dir(world.origin) if with_origin else None
    base = load_state_dict_dir(world.base)
    rows = []
    for name, t in tau.items():
        v = _f64(t).reshape(t.shape[0], -1) if t.dim() else _f64(t).reshape(1, 1)
        n = v.shape[0]
        other = name if target is None else _target_name(world.layout, name)
        theta = _f64((target or base)[other])[:n].reshape(n, -1)  # a grown vocabulary: the donor's rows only
        layer, group = _layer_group(name)
        row = {"tensor": other, "layer": layer, "group": group, "tau": v.ravel(), "theta": theta.ravel(),
               "med": None, "safelora": math.nan, "matrix": t.dim() == 2}
        if origin is not None:
            med = theta - _f64(origin[other])[:n].reshape(n, -1)
            row["med"] = med.ravel()
            if t.dim() == 2:
                row["safelora"] = _safelora(v, med)
        rows.append(row)
    return pd.DataFrame(rows)


def reference_cells(ref: pd.DataFrame) -> dict[tuple[int | None, str], dict[str, float]]:
    cells = {}
    for (layer, group), part in ref.groupby([ref["layer"].fillna(-1), "group"]):
        tau, theta = np.concatenate(list(part["tau"])), np.concatenate(list(part["theta"]))
        cell = {"n_tensors": len(part), "tau_norm": np.linalg.norm(tau), "theta_norm": np.linalg.norm(theta),
                "ratio": np.linalg.norm(tau) / np.linalg.norm(theta)}
        if part["med"].iloc[0] is not None:
            med = np.concatenate(list(part["med"]))
            cell["med_norm"] = np.linalg.norm(med)
            cell["cos_tau_med"] = np.vdot(tau, med) / (np.linalg.norm(tau) * np.linalg.norm(med))
            scores = part.loc[part["matrix"], "safelora"]
            cell["safelora_score"] = scores.mean() if len(scores) else math.nan
            cell["safelora_min"] = scores.min() if len(scores) else math.nan
        cells[(None if layer == -1 else int(layer), group)] = cell
    return cells


def _layer(value: object) -> int | None:
    return None if pd.isna(value) else int(value)  # type: ignore[call-overload]


def _cell_key(row: pd.Series) -> tuple[int | None, str]:
    return (_layer(row["layer"]), row["group"])


# -- scores ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("layout", "extra_vocab"), [("qwen2_vl", 8), ("llava", 0)])
def test_scores_match_a_numpy_reference(make_world, layout: str, extra_vocab: int) -> None:
    world = make_world(layout, extra_vocab=extra_vocab)
    ref = reference_tensors(world)
    # A tiny chunk forces many row chunks and column blocks; chunking must not change a result.
    stats = score_tensors(world.vector, world.target, world.origin, device="cpu", chunk_size=256)
    assert [s.tensor for s in score_tensors(world.vector, world.target, world.origin, device="cpu")] == \
           [s.tensor for s in stats]
    tensors = tensor_table(stats).set_index("tensor")
    assert sorted(tensors.index) == sorted(ref["tensor"])
    shapes = [tuple(map(int, s.split("x"))) for s in tensors["shape"] if "x" in s]
    assert any(r < c for r, c in shapes) and any(r >= c for r, c in shapes)  # both Safe-LoRA paths are exercised
    for row in ref.itertuples():
        got = tensors.loc[row.tensor]
        assert (_layer(got["layer"]), got["group"]) == (_layer(row.layer), row.group)
        np.testing.assert_allclose(got["tau_norm"], np.linalg.norm(row.tau), rtol=1e-12)
        np.testing.assert_allclose(got["theta_norm"], np.linalg.norm(row.theta), rtol=1e-12)
        np.testing.assert_allclose(got["med_norm"], np.linalg.norm(row.med), rtol=1e-12)
        cos = np.vdot(row.tau, row.med) / (np.linalg.norm(row.tau) * np.linalg.norm(row.med))
        np.testing.assert_allclose(got["cos_tau_med"], cos, rtol=1e-9, atol=1e-12)
        if row.matrix:
            np.testing.assert_allclose(got["safelora_score"], row.safelora, rtol=1e-9)
        else:
            assert math.isnan(got["safelora_score"])
    if extra_vocab:  # the grown rows carry no τ: only the donor's rows are scored
        embed = tensors.loc["model.embed_tokens.weight"]
        assert embed["shape"] == f"{world.spec.vocab_size}x{world.spec.hidden_size}"

    cells = reference_cells(ref)
    table = layer_table(stats)
    assert len(table) == len(cells)
    for _, row in table.iterrows():
        expected = cells[_cell_key(row)]
        for column, value in expected.items():
            np.testing.assert_allclose(row[column], value, rtol=1e-9, atol=1e-12, err_msg=f"{_cell_key(row)} {column}")
    # Depth order, then group order; the tensors outside the layer stack come last.
    layers = [None if pd.isna(v) else int(v) for v in table["layer"]]
    inside = [v for v in layers if v is not None]
    assert inside == sorted(inside) and layers[-1] is None and set(inside) == set(range(world.spec.num_layers))


def test_target_without_origin_and_vector_only(make_world) -> None:
    world = make_world("llava")
    no_origin = layer_scores(world.vector, target=world.target)
    cells = reference_cells(reference_tensors(world, with_origin=False))
    for _, row in no_origin.iterrows():
        np.testing.assert_allclose(row["theta_norm"], cells[_cell_key(row)]["theta_norm"], rtol=1e-12)
    assert no_origin[["med_norm", "cos_tau_med", "safelora_score"]].isna().all().all()
    without_safelora = layer_scores(world.vector, target=world.target, origin=world.origin, safelora=False)
    with_safelora = layer_scores(world.vector, target=world.target, origin=world.origin)
    assert without_safelora["safelora_score"].isna().all() and with_safelora["safelora_score"].notna().any()
    pd.testing.assert_frame_equal(without_safelora.drop(columns=["safelora_score", "safelora_min"]),
                                  with_safelora.drop(columns=["safelora_score", "safelora_min"]))

    # Without a target: ‖τ‖ and ‖θ_base‖ from vector.json, reading no weights.
    only = layer_scores(world.vector)
    base_cells = reference_cells(reference_tensors(world, with_target=False, with_origin=False))
    assert len(only) == len(base_cells)
    for _, row in only.iterrows():
        expected = base_cells[_cell_key(row)]
        np.testing.assert_allclose(row["tau_norm"], expected["tau_norm"], rtol=1e-9)
        np.testing.assert_allclose(row["theta_norm"], expected["theta_norm"], rtol=1e-9)
        np.testing.assert_allclose(row["ratio"], expected["ratio"], rtol=1e-9)
    assert only["cos_tau_med"].isna().all()
    with pytest.raises(UsageError, match="--origin needs --target"):
        tensor_scores(world.vector, origin=world.origin)


def test_scores_use_the_merge_plan(make_world) -> None:
    """Names, layers and groups are the plan's, mapping rules included; an excluded tensor is still scored."""
    world = make_world("llava")
    mapping = MappingRules(exclude=["lm_head"])
    tensors = tensor_scores(world.vector, world.target, mapping=mapping)
    vector, target = SafetyVector.open(world.vector), Checkpoint.open(world.target)
    try:
        plan = build_plan(target, vector, Recipe())
        expected = [(a.target, a.layer, a.group) for a in plan.actions if a.donor is not None]
        assert inspection_plan(vector, target, mapping=mapping).grafted[0].target == expected[0][0]
    finally:
        vector.close()
        target.close()
    got = [(t, None if pd.isna(layer) else int(layer), g)
           for t, layer, g in zip(tensors["tensor"], tensors["layer"], tensors["group"], strict=True)]
    assert got == expected and "language_model.lm_head.weight" in set(tensors["tensor"])


# -- λ --------------------------------------------------------------------------------------------------------------
def _expected_lambda(coefficients: Coefficients, layer: int | None, group: str, num_layers: int) -> float:
    """The recipe rule written out: linear interpolation between control points at evenly spaced depths."""
    points = coefficients.control_points
    factor = 1.0
    if layer is not None and points:
        depth = layer / (num_layers - 1) * (len(points) - 1)
        left = min(int(depth), len(points) - 2)
        factor = points[left] + (depth - left) * (points[left + 1] - points[left])
    group_factor = coefficients.groups.get(group, 0.0 if group == "vision" else 1.0)
    return coefficients.scale * factor * group_factor


def test_lambdas_follow_the_recipe_rule_and_the_plan(make_world) -> None:
    world = make_world("qwen2_vl", extra_vocab=8)
    coefficients = Coefficients(scale=0.8, control_points=[0.2, 1.0, 0.4], groups={"mlp": 0.5, "norm": 0.0})
    recipe = Recipe(target=str(world.target), vector=str(world.vector), coefficients=coefficients,
                    mapping=MappingRules(exclude=[r"layers\.1\.self_attn\.q_proj\.weight"]))
    table = lambdas(recipe)
    layers = world.spec.num_layers
    for _, row in table.iterrows():
        layer, group = _cell_key(row)
        lam = _expected_lambda(coefficients, layer, group, layers)
        if (layer, group) == (1, "attn"):  # one of its tensors is excluded: λ 0 for it
            assert row["n_grafted"] == row["n_tensors"] - 1
            np.testing.assert_allclose(row["lam"], lam * (row["n_tensors"] - 1) / row["n_tensors"], rtol=1e-12)
        else:
            np.testing.assert_allclose(row["lam"], lam, rtol=1e-12)
            assert row["n_grafted"] == (row["n_tensors"] if lam else 0)
    # The merge's own plan agrees tensor by tensor.
    vector, target = SafetyVector.open(world.vector), Checkpoint.open(world.target)
    try:
        plan = build_plan(target, vector, recipe)
        cells: dict[tuple, list[float]] = {}
        for a in plan.actions:
            if a.donor is not None:
                cells.setdefault((a.layer, a.group), []).append(a.lam)
        assert {k: sum(v) / len(v) for k, v in cells.items()} == \
               {_cell_key(r): r["lam"] for _, r in table.iterrows()}
        # Coefficients alone over the same plan: no exclusion, every λ by the rule.
        plain = lambdas(coefficients, plan)
        assert all(math.isclose(r["lam"], _expected_lambda(coefficients, *_cell_key(r), layers), rel_tol=1e-12)
                   for _, r in plain.iterrows())
    finally:
        vector.close()
        target.close()
    # Vector only: the manifest's layers and groups, same λ.
    assert lambdas(coefficients, world.vector).equals(plain)
    with pytest.raises(UsageError, match="λ needs the tensors"):
        lambdas(coefficients)


# -- studies --------------------------------------------------------------------------------------------------------
def _search_like_study(journal: Path, name: str, *, multi: bool, trials: int = 24):
    """A stand-in for `graft search`: same user attributes, an objective driven mostly by layer_2. Stored in an
    optuna journal file (a SQLite database commits each trial to disk, which is ten times slower)."""
    directions = ["maximize", "maximize"] if multi else ["maximize"]
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name=name, storage=storage, directions=directions,
                                sampler=optuna.samplers.RandomSampler(seed=3))

    def objective(trial: optuna.Trial):
        layers = [trial.suggest_float(f"layer_{i}", 0.0, 1.0) for i in range(4)]
        attn = trial.suggest_float("attn", 0.0, 1.0)
        scale = trial.suggest_float("scale", 0.5, 1.5)
        trial.suggest_float("temperature", 0.0, 1.0)  # no layer, no group: "other"
        coefficients = Coefficients(scale=scale, layers=layers, groups={"attn": attn})
        safety = layers[2] + 0.05 * attn
        medical = 1.0 - 0.5 * layers[2] + 0.1 * scale
        trial.set_user_attr("coefficients", coefficients.model_dump(mode="json"))
        trial.set_user_attr("safety", safety)
        trial.set_user_attr("medical", medical)
        return (safety, medical) if multi else safety

    study.optimize(objective, n_trials=trials)
    return study


def test_study_coefficients_and_importance(tmp_path: Path) -> None:
    storage = str(tmp_path / "search.journal")
    single = _search_like_study(tmp_path / "search.journal", "single", multi=False)
    multi = _search_like_study(tmp_path / "search.journal", "pareto", multi=True)

    choice = study_coefficients(storage, "single")
    assert choice.trial == single.best_trial.number
    assert choice.coefficients == Coefficients.model_validate(single.best_trial.user_attrs["coefficients"])
    safest = max(multi.best_trials, key=lambda t: t.user_attrs["safety"])
    assert study_coefficients(storage, "pareto").trial == safest.number
    assert study_coefficients(storage, "pareto", trial=5).coefficients == \
           Coefficients.model_validate(multi.trials[5].user_attrs["coefficients"])

    table = study_importance(storage, "single", num_layers=4)
    fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
    expected = optuna.importance.get_param_importances(single, evaluator=fanova)
    assert dict(zip(table["param"], table["importance"], strict=True)) == pytest.approx(expected)
    assert table.iloc[0]["param"] == "layer_2"  # the objective's driver is found and placed on its layer
    by_param = table.set_index("param")
    assert (by_param.loc["layer_2", "kind"], by_param.loc["layer_2", "first_layer"]) == ("layer", 2)
    assert by_param.loc["attn", "kind"] == "group" and by_param.loc["attn", "group"] == "attn"
    assert by_param.loc["scale", "kind"] == "scale" and by_param.loc["temperature", "kind"] == "other"
    assert pd.isna(by_param.loc["temperature", "first_layer"])

    both = study_importance(storage, "pareto", num_layers=4)
    assert set(both["objective"]) == {"objective_0", "objective_1"}
    medical = optuna.importance.get_param_importances(multi, evaluator=fanova, target=lambda t: t.values[1])
    part = both[both["objective"] == "objective_1"]
    assert dict(zip(part["param"], part["importance"], strict=True)) == pytest.approx(medical)

    with pytest.raises(InputError, match=r"no study named 'nope' \(studies there: pareto, single\)"):
        study_coefficients(storage, "nope")
    with pytest.raises(UsageError, match="name the study"):
        study_coefficients(storage)
    with pytest.raises(InputError, match="no trial 999"):
        study_coefficients(storage, "single", trial=999)
    with pytest.raises(InputError, match="no such study storage file"):
        study_coefficients(str(tmp_path / "missing.journal"), "single")
    missing = tmp_path / "missing.db"
    with pytest.raises(InputError, match="no such study database"):
        study_coefficients(f"sqlite:///{missing}", "single")
    assert not missing.exists()  # optuna would have created an empty database


def test_sqlite_storage_by_url_or_path_and_a_trial_without_coefficients(tmp_path: Path) -> None:
    database = tmp_path / "s.db"
    study = optuna.create_study(study_name="bare", storage=f"sqlite:///{database}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    for storage in (f"sqlite:///{database}", str(database)):
        with pytest.raises(InputError, match="trial 0: no 'coefficients' user attribute"):
            study_coefficients(storage, "bare", trial=0)


@pytest.mark.parametrize(("name", "kind", "index", "group"), [
    ("layer_3", "layer", 3, None), ("layers.3", "layer", 3, None), ("layer3", "layer", 3, None),
    ("L3_attn", "layer", 3, "attn"), ("block_1", "block", 1, None), ("blocks.0.mlp", "block", 0, "mlp"),
    ("control_points_2", "point", 2, None), ("cp1", "point", 1, None), ("attn", "group", None, "attn"),
    ("groups.feed_forward", "group", None, "mlp"), ("scale", "scale", None, None), ("lambda", "scale", None, None),
    ("temperature", "other", None, None),
])
def test_param_names_are_read_tolerantly(name: str, kind: str, index: int | None, group: str | None) -> None:
    target = param_target(name)
    assert (target.kind, target.index, target.group) == (kind, index, group)


def test_block_and_point_params_map_to_the_layers_they_scale() -> None:
    layers = 10
    for blocks in (2, 3, 4):
        for b in range(blocks):
            expected = [ell for ell in range(layers) if ell * blocks // layers == b]
            assert layers_of(param_target(f"block_{b}"), layers, blocks) == (expected[0], expected[-1])
    for points in (2, 3, 5):
        for k in range(points):
            spacing = 1 / (points - 1)
            touched = [ell for ell in range(layers) if abs(ell / (layers - 1) - k * spacing) < spacing - 1e-12]
            assert layers_of(param_target(f"point_{k}"), layers, points) == (touched[0], touched[-1])
    assert layers_of(param_target("layer_12"), layers, 13) is None  # beyond the model's depth


# -- report ---------------------------------------------------------------------------------------------------------
def test_report_files_reload_and_the_folder_is_atomic(make_world, tmp_path: Path, monkeypatch) -> None:
    world = make_world("llava")
    stats = score_tensors(world.vector, world.target, world.origin)
    scores, tensors = layer_table(stats), tensor_table(stats)
    lam = lambdas(Coefficients(scale=0.5, blocks=[1.0, 0.0]), world.vector)
    importance = pd.DataFrame({"objective": ["value"] * 2, "param": ["layer_0", "attn"], "importance": [0.7, 0.3],
                               "kind": ["layer", "group"], "index": [0, None], "group": [None, "attn"],
                               "first_layer": [0, None], "last_layer": [0, None]})
    out = tmp_path / "report"
    report = write_report(out, scores=scores, lambdas=lam, tensors=tensors, importance=importance,
                          sources={"vector": str(world.vector)}, inputs=[world.vector, world.target])
    assert report.out == out.absolute()
    assert sorted(p.name for p in out.iterdir() if p.name != MARKER) == sorted(report.files)  # + the graft marker
    layers = pd.read_csv(out / "layers.csv")
    expected = combine(scores, lam)
    np.testing.assert_allclose(layers["update_ratio"], expected["lam"].abs() * expected["ratio"], rtol=1e-12)
    np.testing.assert_allclose(layers["tau_norm"], scores["tau_norm"], rtol=1e-12)
    assert list(layers["layer"].isna()) == list(scores["layer"].isna())
    assert len(pd.read_csv(out / "tensors.csv")) == len(tensors)
    assert list(pd.read_csv(out / "importance.csv")["param"]) == ["layer_0", "attn"]
    for column in ("tau_norm", "ratio", "cos_tau_med", "safelora_score", "lam", "update_ratio"):
        for kind in ("heatmap", "depth"):
            with Image.open(out / f"{kind}_{column}.png") as image:
                image.verify()
                assert image.size[0] > 200 and image.size[1] > 150
    assert "importance.png" in report.files
    assert json.loads((out / "inspect.json").read_text())["sources"]["vector"] == str(world.vector)

    with pytest.raises(OutputError, match="already exists"):
        write_report(out, scores=scores)
    write_report(out, scores=scores, force=True)
    assert not (out / "tensors.csv").exists()  # replaced whole, not merged
    empty = tmp_path / "empty"
    empty.mkdir()
    write_report(empty, lambdas=lam)  # an empty folder is no one's report
    with pytest.raises(OutputError, match="overlaps input"):
        write_report(world.vector / "report", scores=scores, inputs=[world.vector])

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr("graft.inspect.report.depth_plot", broken)
    with pytest.raises(RuntimeError):
        write_report(tmp_path / "half", scores=scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "report"]  # nothing half-written left behind


# -- CLI ------------------------------------------------------------------------------------------------------------
def test_cli_report_with_study(make_world, tmp_path: Path) -> None:
    world = make_world("qwen2_vl", extra_vocab=8)
    storage = str(tmp_path / "search.journal")
    study = _search_like_study(tmp_path / "search.journal", "s", multi=True)
    out = tmp_path / "report"
    result = runner.invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target),
                                 "--origin", str(world.origin), "--study", "s", "--storage", storage,
                                 "--trial", "4", "--out", str(out), "--top", "3"])
    assert result.exit_code == 0, result.output
    assert "trial 4" in result.output and "top 3 of" in result.output
    chosen = Coefficients.model_validate(study.trials[4].user_attrs["coefficients"])
    layers = pd.read_csv(out / "layers.csv")
    for _, row in layers.iterrows():
        layer = None if pd.isna(row["layer"]) else int(row["layer"])
        factor = 1.0 if layer is None else chosen.layers[layer]
        expected = chosen.scale * factor * chosen.groups.get(row["group"], 1.0)
        np.testing.assert_allclose(row["lam"], expected, rtol=1e-12)
        np.testing.assert_allclose(row["update_ratio"], abs(expected) * row["ratio"], rtol=1e-9)
    importance = pd.read_csv(out / "importance.csv")
    assert set(importance["objective"]) == {"objective_0", "objective_1"}
    assert (out / "importance.png").exists() and (out / "heatmap_lam.png").exists()
    index = json.loads((out / "inspect.json").read_text())
    assert index["sources"]["trial"] == 4 and index["sources"]["study"] == "s"

    # The same report from a recipe: its target, vector and coefficients.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"target": str(world.target), "vector": str(world.vector),
                                      "coefficients": {"scale": 0.25}}))
    result = runner.invoke(app, ["inspect", "--recipe", str(recipe), "-o", str(tmp_path / "r2"), "-q"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str((tmp_path / "r2").absolute())
    assert np.allclose(pd.read_csv(tmp_path / "r2" / "layers.csv")["lam"], 0.25)


class _DepthScorer:
    """Stands in for the evaluation suite of `graft search`: safety rises with λ in the late layers' attention,
    medical skill falls with λ overall (a plain function of the coefficients)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers

    def score(self, c: Coefficients, stage) -> dict[str, float]:
        factors = c.layer_factors(self.num_layers)
        late = c.lam(self.num_layers - 1, "attn", factors)
        mean = sum(c.lam(layer, "mlp", factors) for layer in range(self.num_layers)) / self.num_layers
        safety, medical = min(1.0, 0.2 + 0.5 * late), max(0.0, 0.7 - 0.1 * mean - 0.05 * late)
        return {t: safety if t == "catqa" else medical for t in stage.tasks}


def test_cli_reads_a_graft_search_study(make_world, tmp_path: Path) -> None:
    """Only --storage: vector, target and the trial (the one best_recipe.yaml holds) come from the study."""
    from graft.search import run_search

    world = make_world("qwen2_vl")
    space = tmp_path / "space.yaml"
    space.write_text("graft_space: 1\nsampler: random\ndepth: {kind: blocks, count: 2, low: 0.0, high: 1.5}\n"
                     "groups: {attn: {low: 0.0, high: 1.5}, norm: 0.0, embed: 0.0, head: 0.0}\n"
                     "baselines: {uniform: [1.0]}\n")
    evals = tmp_path / "eval.yaml"
    evals.write_text(yaml.safe_dump({"graft_search_eval": 1, "safety": ["catqa"], "medical": ["pubmedqa"],
                                     "data": str(ROOT / "graft" / "evals" / "fixtures" / "data.yaml")}))
    search = tmp_path / "search"
    vector = SafetyVector.open(world.vector)
    num_layers = vector.manifest.num_layers
    vector.close()
    run_search(space=space, eval_config=evals, target=str(world.target), vector=str(world.vector), out=search,
               scorer=_DepthScorer(num_layers), trials=6, max_medical_drop=0.1)
    best = json.loads((search / "summary.json").read_text())["best"]
    out = tmp_path / "report"
    result = runner.invoke(app, ["inspect", "--storage", str(search / "graft.db"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "inspect.json").read_text())["sources"]
    assert index["trial"] == best["number"] and index["vector"] == str(world.vector)
    assert index["target"] == str(world.target)
    recipe = Recipe.from_yaml(search / "best_recipe.yaml")
    expected = lambdas(recipe)
    layers = pd.read_csv(out / "layers.csv")
    np.testing.assert_allclose(layers["lam"], expected["lam"], rtol=1e-12)
    importance = pd.read_csv(out / "importance.csv").set_index("param")
    assert importance.loc["block_1", "kind"] == "block" and importance.loc["block_1", "first_layer"] == num_layers // 2
    assert importance.loc["group_attn", "kind"] == "group" and importance.loc["group_attn", "group"] == "attn"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--vector", "{tmp}/missing"], 3, "no such vector folder"),
    (["--recipe", "{tmp}/none.yaml"], 2, "cannot read recipe"),
    (["--vector", "{vector}", "--origin", "{origin}"], 2, "--origin needs --target"),
    (["--vector", "{vector}", "--target", "{target}", "--origin", "{other_origin}"], 4, "origin has no tensor"),
    (["--vector", "{vector}", "--study", "s"], 2, "need --storage"),
    (["--vector", "{vector}", "--storage", "sqlite:///{tmp}/search.db", "--study", "nope"], 3, "no study named"),
    (["--vector", "{vector}", "--storage", "{tmp}/nothing.db"], 3, "no such study storage"),
    (["--vector", "{vector}", "--out", "{tmp}/taken"], 5, "already exists"),
    (["--vector", "{vector}", "--chunk-size", "lots"], 2, "--chunk-size"),
])
def test_cli_errors(make_world, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    world, other = make_world("qwen2_vl"), make_world("llava")
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'search.db'}")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    values = {"tmp": tmp_path, "vector": world.vector, "target": world.target, "origin": world.origin,
              "other_origin": other.origin}
    argv = ["inspect", *(a.format(**values) for a in args)]
    if "--chunk-size" in args:
        argv += ["--target", str(world.target)]
    result = runner.invoke(app, argv)
    assert result.exit_code == code, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_an_origin_with_fewer_rows_than_the_vector_is_refused(make_world, tmp_path: Path) -> None:
    """An origin whose vocabulary is smaller than the vector's cannot be the target's base: exit 4, not garbage."""
    from safetensors.torch import save_file

    world = make_world("causal")
    state = load_state_dict_dir(world.origin)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        state[name] = state[name][:-4].clone()
    shrunk = tmp_path / "origin"
    shrunk.mkdir()
    save_file(state, str(shrunk / "model.safetensors"))
    result = runner.invoke(app, ["inspect", "--vector", str(world.vector), "--target", str(world.target),
                                 "--origin", str(shrunk)])
    assert result.exit_code == 4, result.output
    assert "fewer rows" in result.output


# -- the example notebook -------------------------------------------------------------------------------------------
def test_example_notebook_runs(tmp_path: Path) -> None:
    import nbclient  # dev extra: a missing install should fail here, not skip
    import nbformat

    notebook = nbformat.read(ROOT / "examples" / "inspect_layers.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "<table" in html and "tau_norm" in html and "safelora_score" in html
    assert any("image/png" in o.get("data", {}) for o in outputs)
    report = next(tmp_path.rglob("inspect.json")).parent
    assert (report / "layers.csv").exists() and (report / "heatmap_cos_tau_med.png").exists()
