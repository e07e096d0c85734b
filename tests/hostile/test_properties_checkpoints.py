"""Property-based tests (hypothesis, seeded and bounded) of every parser on the checkpoint, vector and recipe side:
safetensors headers, indexes, config.json, vector.json, recipes (YAML) and the flags laid over them. Whatever the
input, each parser either accepts it (and then what it accepted is what the format says: safetensors itself loads
the header, the index agrees with the shards, sizes are in range) or refuses it with graft's error for that input,
in one line: never another exception, never a hang."""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from graft.errors import GraftError, InputError, UsageError
from graft.io.checkpoint import Checkpoint, read_shard_header
from graft.io.dtypes import SAFETENSORS_TAGS, TAGS
from graft.recipe import SIZE_RANGES, Recipe
from graft.recipe_flags import build_recipe
from graft.schema import load_yaml_text
from graft.vector import SafetyVector, extract_vector

BOUNDED = settings(derandomize=True, max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

names = st.text(st.characters(codec="utf-8"), min_size=0, max_size=12)  # any Unicode text, controls included
# and lone surrogates too, as a JSON header may spell them (`"\ud800"`): not text, and safetensors refuses them
tensor_names = st.text(st.characters(exclude_categories=()), min_size=0, max_size=12)
json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | names
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner,
                                                                                                     max_size=4),
                           max_leaves=12)


def _one_line(exc: GraftError) -> None:
    assert "\n" not in str(exc) and str(exc), repr(exc)
    event("refused")


# -- safetensors headers ------------------------------------------------------------------------------------------
@st.composite
def headers(draw: st.DrawFn) -> tuple[dict, int]:
    """A header valid by construction (contiguous spans, known dtypes), then at most one field replaced by anything;
    and how many data bytes follow it (the exact size, or a few more or fewer)."""
    count = draw(st.integers(0, 4))
    header: dict[str, object] = {}
    offset = 0
    for i in range(count):
        dtype = draw(st.sampled_from(sorted(TAGS)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        nbytes = math.prod(shape) * TAGS[dtype][1]
        header[draw(tensor_names.filter(lambda n: n != "__metadata__")) + f".{i}"] = {
            "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(names, names | json_scalars, max_size=3))
    if header and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(header)))
        if key == "__metadata__" or draw(st.booleans()):
            header[key] = draw(json_values)
        else:
            field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            entry = dict(header[key])  # type: ignore[arg-type]
            entry[field] = draw(json_values | st.sampled_from(sorted(SAFETENSORS_TAGS)))
            header[key] = entry
    return header, offset + draw(st.sampled_from([0, 0, 0, 1, -1, 8]))


@BOUNDED
@given(case=headers())
def test_a_header_graft_accepts_is_one_safetensors_loads(case: tuple[dict, int]) -> None:
    header, data_size = case
    body = json.dumps(header).encode()  # ensure_ascii: controls and lone surrogates as \u escapes, as JSON allows
    with tempfile.TemporaryDirectory() as folder:
        shard = Path(folder) / "model.safetensors"
        shard.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * max(0, data_size))
        try:
            parsed = read_shard_header(shard)
        except InputError as exc:
            _one_line(exc)
            assert str(shard) in str(exc)
            return
        event("accepted")
        with safe_open(str(shard), "pt") as handle:  # the oracle: safetensors loads every tensor graft accepted
            assert sorted(handle.keys()) == sorted(info.name for info in parsed.tensors)
            for info in parsed.tensors:
                assert handle.get_slice(info.name).get_dtype() == info.dtype
                assert list(handle.get_slice(info.name).get_shape()) == list(info.shape)


# -- indexes --------------------------------------------------------------------------------------------------------
@BOUNDED
@given(weight_map=st.dictionaries(names | st.just("a"), names | st.sampled_from(["model.safetensors", "../x",
                                                                                  "/etc/passwd", "."]),
                                  max_size=3) | json_values,
       metadata=st.none() | json_values)
def test_an_index_graft_accepts_agrees_with_its_shards(weight_map: object, metadata: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_file({"a": torch.zeros(2)}, str(folder / "model.safetensors"))
        body: dict[str, object] = {"weight_map": weight_map}
        if metadata is not None:
            body["metadata"] = metadata
        (folder / "model.safetensors.index.json").write_text(json.dumps(body))
        try:
            with Checkpoint.open(folder) as checkpoint:
                assert set(checkpoint.tensors) == set(weight_map)  # type: ignore[arg-type]
                assert all(checkpoint.tensors[t].file.name == f for t, f in weight_map.items())  # type: ignore[union-attr]
        except InputError as exc:
            _one_line(exc)


# -- config.json ----------------------------------------------------------------------------------------------------
@BOUNDED
@given(config=json_values | st.dictionaries(st.sampled_from(["model_type", "architectures", "text_config",
                                                             "vision_config", "quantization_config"]), json_values,
                                            max_size=4))
def test_a_config_graft_accepts_has_the_types_it_reads(config: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_file({"a": torch.zeros(2)}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(config))
        try:
            with Checkpoint.open(folder) as checkpoint:
                read = checkpoint.config
        except InputError as exc:
            _one_line(exc)
            assert "config.json" in str(exc)
            return
        assert isinstance(read, dict)
        assert read.get("model_type") is None or isinstance(read["model_type"], str)
        assert all(read.get(k) is None or isinstance(read[k], dict) for k in ("text_config", "vision_config"))


# -- vector.json ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vector")
    gen = torch.Generator().manual_seed(0)
    for side in ("base", "aligned"):
        (root / side).mkdir()
        save_file({"model.embed_tokens.weight": torch.randn(4, 2, generator=gen),
                   "model.layers.0.mlp.up_proj.weight": torch.randn(2, 2, generator=gen)},
                  str(root / side / "model.safetensors"))
    return extract_vector(root / "base", root / "aligned", root / "vec", hash_sources=False).out


def _paths(value: object, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    return out


@settings(derandomize=True, max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_manifest_graft_accepts_describes_its_shards(vector: Path, data: st.DataObject) -> None:
    manifest = json.loads((vector / "vector.json").read_text())
    where = data.draw(st.sampled_from(_paths(manifest)[1:]))
    node = manifest
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = data.draw(json_values)  # one field replaced by anything
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "vec"
        folder.mkdir()
        (folder / "vector.safetensors").write_bytes((vector / "vector.safetensors").read_bytes())
        (folder / "vector.json").write_text(json.dumps(manifest))
        try:
            opened = SafetyVector.open(folder)
        except InputError as exc:
            _one_line(exc)
            return
        event("accepted")
        try:
            for name, entry in opened.manifest.tensors.items():
                info = opened.checkpoint.tensors[name]
                assert (info.dtype, list(info.shape)) == (entry.dtype, entry.shape)
        finally:
            opened.close()


# -- recipes and the flags laid over them ---------------------------------------------------------------------------
recipe_fields = st.fixed_dictionaries({}, optional={
    "graft_recipe": json_values, "target": json_values, "vector": json_values, "out": json_values,
    "description": json_values,
    "coefficients": st.fixed_dictionaries({}, optional={
        "scale": json_values | st.floats(), "layers": st.lists(st.floats() | json_scalars, max_size=4),
        "blocks": json_values, "control_points": json_values,
        "groups": st.dictionaries(st.sampled_from(["attn", "mlp", "norm", "vision", "x"]), json_values, max_size=2)}),
    "operator": json_values | st.sampled_from(["linear", "dare", "trim", "orthogonal"]),
    "mapping": st.fixed_dictionaries({}, optional={"rules": json_values, "include": json_values,
                                                   "exclude": st.lists(names, max_size=2)}),
    "options": st.fixed_dictionaries({}, optional={
        "dtype": json_values, "chunk_size": json_values | st.sampled_from(["1", "1KB", "8MB", "5GB"]),
        "shard_size": json_values | st.sampled_from(["1", "1KB", "5GB", "2TB"]), "strict": json_values,
        "origin": json_values})})


@BOUNDED
@given(body=recipe_fields, as_text=st.booleans(), noise=names)
def test_a_recipe_is_a_valid_recipe_or_one_usage_line(body: dict, as_text: bool, noise: str) -> None:
    import yaml

    text = yaml.safe_dump(body) if not as_text else yaml.safe_dump(body) + noise
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            recipe = Recipe.from_yaml(path)
        except UsageError as exc:
            _one_line(exc)
            assert str(path) in str(exc)
            return
    event("accepted")
    for field in ("chunk_size", "shard_size"):  # what was accepted is in range
        value = getattr(recipe.options, field)
        assert value is None or SIZE_RANGES[field][0] <= _bytes(value) <= SIZE_RANGES[field][1]
    for value in (recipe.coefficients.scale, *(recipe.coefficients.layers or [])):
        assert math.isfinite(value)


def _bytes(text: str) -> int:
    from graft.io.writer import parse_size

    return parse_size(text)


flag_text = names | st.sampled_from(["0", "-1", "nan", "inf", "1e400", "0.5", "1,2", "1KB", "999B", "4GB", "5GB",
                                     "attn=0.5", "mlp=nan", "x=>y", "(=>", "density=0.3", "density=[&a [*a]]"])


@BOUNDED
@given(flags=st.fixed_dictionaries({}, optional={
    "scale": st.floats(), "layers": flag_text, "blocks": flag_text, "control_points": flag_text,
    "group": st.lists(flag_text, max_size=2), "map": st.lists(flag_text, max_size=2),
    "include": st.lists(flag_text, max_size=2), "chunk_size": flag_text, "shard_size": flag_text,
    "operator": st.sampled_from(["linear", "dare", "trim", "", "nope"]),
    "operator_param": st.lists(flag_text, max_size=2), "dtype": flag_text}))
def test_flags_make_a_valid_recipe_or_one_usage_line(flags: dict) -> None:
    try:
        recipe = build_recipe(None, **flags)
    except UsageError as exc:
        _one_line(exc)
        return
    event("accepted")
    for field in ("chunk_size", "shard_size"):
        value = getattr(recipe.options, field)
        assert value is None or SIZE_RANGES[field][0] <= _bytes(value) <= SIZE_RANGES[field][1]
    assert math.isfinite(recipe.coefficients.scale)


@BOUNDED
@given(text=st.text(st.characters(codec="utf-8"), max_size=200))
def test_any_text_is_plain_yaml_data_or_a_yaml_error(text: str) -> None:
    import yaml

    with contextlib.suppress(yaml.YAMLError, RecursionError):
        load_yaml_text(text)
