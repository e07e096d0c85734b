"""Property-based tests of every parser and numeric flag on the evaluation, search and inspection side: whatever
a user hands graft there (a data.yaml, a search's eval.yaml, a search space, benchmark rows in each published
format, an inspect report read back by `recipe --from-scores`, any value of a numeric flag) gives either a result
that holds graft's invariants or a GraftError with the documented exit code and a one-line message that is safe
for a terminal (what it quotes from the file escaped by graft.display.printable); never another exception, never a
hang.

Seeded and bounded so CI stays deterministic and fast: `derandomize=True` (the same examples on every run and
machine), a few dozen examples each, a per-example deadline, and an alarm that turns a hang into a failure.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import string
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from graft.cli import app
from graft.display import printable
from graft.errors import GraftError
from graft.evals import loaders
from graft.evals.benchmarks import benchmark
from graft.evals.config import DataConfig
from graft.flag_ranges import DEMO, EVAL, INSPECT, SEARCH, threshold_range
from graft.inspect.select import SCORE_METRICS, recipe_from_scores
from graft.search.config import SearchEvalConfig
from graft.search.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DATA = ROOT / "graft" / "evals" / "fixtures" / "data.yaml"
HANG_S = 60  # an example running this long is a hang, whatever the machine's load


def bounded(examples: int, deadline_s: float = 20.0) -> Callable:
    """The settings every property here runs under: seeded, few examples, a deadline per example."""
    return settings(derandomize=True, max_examples=examples, deadline=timedelta(seconds=deadline_s),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)


class Hung(Exception):
    pass


@contextmanager
def no_hang(seconds: int = HANG_S) -> Iterator[None]:
    def expire(*_: object) -> None:
        raise Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(call: Callable[[], Any], codes: tuple[int, ...]) -> Any:
    """`call()`'s result, or None when it raised a GraftError with one of `codes` and a one-line message; any other
    exception fails the property."""
    with no_hang():
        try:
            return call()
        except GraftError as exc:
            assert exc.exit_code in codes, f"exit {exc.exit_code}: {exc}"
            assert str(exc).strip() and printable(str(exc)) == str(exc), repr(str(exc))  # one line, safe to print
            return None


# -- values a user file may hold --------------------------------------------------------------------------------
TEXT = st.text(max_size=40)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(TEXT, inner, max_size=4)), max_leaves=8)


def yaml_file(folder: Path, data: object, name: str) -> Path:
    path = folder / name
    try:
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        path.write_text("{}")
    return path


# -- data.yaml ------------------------------------------------------------------------------------------------------
DATA_KEYS = st.sampled_from(["catqa", "hexphi", "pubmedqa", "medqa", "vqarad", "benign", "figstep", "benchmarks",
                             "unknown", "hub"])
DATA_VALUES = st.one_of(VALUES, st.fixed_dictionaries({"hub": VALUES}, optional={"split": VALUES, "name": VALUES,
                                                                                 "revision": VALUES, "x": VALUES}))


@bounded(60)
@given(doc=st.one_of(st.dictionaries(DATA_KEYS, DATA_VALUES, max_size=5), VALUES, st.text(max_size=200)))
def test_data_yaml_gives_a_config_or_a_usage_or_input_error(doc: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.yaml"
        if isinstance(doc, str):
            path.write_text(doc, encoding="utf-8")
        else:
            path = yaml_file(Path(tmp), doc, "data.yaml")
        config = outcome(lambda: DataConfig.from_yaml(path), (2, 3))
        if config is not None:
            assert all(isinstance(p, Path) for p in config.paths())


# -- a search's eval.yaml -------------------------------------------------------------------------------------------
EVAL_FIELDS = {
    "graft_search_eval": st.one_of(st.just(1), VALUES), "data": st.one_of(st.just(str(FIXTURE_DATA)), VALUES),
    "safety": st.one_of(st.just(["catqa"]), st.lists(st.sampled_from(["catqa", "medqa", "benign", "x"]), max_size=3),
                        VALUES),
    "medical": st.one_of(st.just(["medqa"]), st.lists(st.sampled_from(["medqa", "pubmedqa", "catqa"]), max_size=3),
                         VALUES),
    "over_refusal": st.one_of(st.booleans(), st.just(["benign"]), VALUES),
    "holdout": SCALARS, "split_seed": SCALARS, "limit": SCALARS, "fraction": SCALARS, "seed": SCALARS,
    "limits": st.one_of(st.dictionaries(st.sampled_from(["catqa", "medqa", "x"]), SCALARS, max_size=2), VALUES),
    "judge": st.one_of(st.sampled_from(["keyword", "guard:", "openai:m@http://x", "nope"]), VALUES),
    "mc_mode": st.one_of(st.sampled_from(["loglik", "generate"]), VALUES),
    "max_new_tokens": SCALARS, "batch_size": SCALARS, "system_prompt": SCALARS,
    "screening": st.one_of(st.fixed_dictionaries({"tasks": st.just(["catqa"])},
                                                 optional={"limit": SCALARS, "threshold": SCALARS,
                                                           "below_best_by": SCALARS}), VALUES),
    "objective": st.one_of(st.fixed_dictionaries({}, optional={"mode": st.sampled_from(["constrained", "pareto", "x"]),
                                                               "max_medical_drop": SCALARS,
                                                               "max_over_refusal": SCALARS, "weight": SCALARS,
                                                               "penalty": SCALARS}), VALUES),
    "log": st.one_of(st.sampled_from(["mlflow", "nope"]), VALUES),
    "extra": VALUES,
}


VALID_EVAL = {"graft_search_eval": 1, "data": str(FIXTURE_DATA), "safety": ["catqa"], "medical": ["medqa"]}


@bounded(80)
@given(changes=st.fixed_dictionaries({}, optional=EVAL_FIELDS))
def test_search_eval_config_gives_a_config_or_a_usage_error(changes: dict) -> None:
    doc = {**VALID_EVAL, **changes}
    with tempfile.TemporaryDirectory() as tmp:
        path = yaml_file(Path(tmp), doc, "eval.yaml")
        config = outcome(lambda: SearchEvalConfig.from_yaml(path), (2,))
        if config is None:
            return
        # What graft then does with it never fails outside GraftError either.
        assert 0 <= config.holdout < 1 and 0 <= config.seed <= 2**32 - 1
        for stage in ("safety", "medical"):
            outcome(lambda stage=stage: config.stage(stage).batches(), (2,))
        obj = config.objective
        assert all(math.isfinite(v) for v in (obj.max_medical_drop, obj.weight, obj.penalty))


NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70), st.booleans(),
                   st.sampled_from([".inf", "-.inf", ".nan", "1e400", "nan"]))
EVAL_NUMBERS = ["holdout", "split_seed", "limit", "fraction", "seed", "max_new_tokens", "batch_size", "limits.catqa",
                "screening.limit", "screening.fraction", "screening.threshold", "screening.below_best_by",
                "objective.max_medical_drop", "objective.max_over_refusal", "objective.weight", "objective.penalty"]


@pytest.mark.parametrize("field", EVAL_NUMBERS)
def test_every_number_in_a_search_eval_config_is_finite_and_in_its_range(field: str) -> None:
    @bounded(25)
    @given(value=NUMBER)
    def run(value: object) -> None:
        doc: dict = {**VALID_EVAL, "over_refusal": True, "screening": {"tasks": ["catqa"]}}
        head, _, key = field.rpartition(".")
        (doc.setdefault(head, {}) if head else doc)[key] = value
        with tempfile.TemporaryDirectory() as tmp:
            text = yaml.safe_dump(doc).replace(f"'{value}'", str(value))  # YAML's own .inf / .nan spellings
            path = Path(tmp) / "eval.yaml"
            path.write_text(text)
            config = outcome(lambda: SearchEvalConfig.from_yaml(path), (2,))
        if config is None:
            return
        read = config.model_dump()
        for part in field.split("."):
            read = read[part]
        assert isinstance(read, int | float) and not isinstance(read, bool) and math.isfinite(read), read
        assert read >= 0, read  # every number in eval.yaml is a count, a share, a seed or a tolerance

    run()


# -- search spaces --------------------------------------------------------------------------------------------------
RANGE = st.one_of(SCALARS, st.fixed_dictionaries({"low": SCALARS, "high": SCALARS},
                                                 optional={"step": SCALARS, "log": SCALARS, "x": SCALARS}))
SPACE_FIELDS = {
    "description": VALUES, "sampler": st.one_of(st.sampled_from(["tpe", "cmaes", "gp", "nsga2", "random", "x"]),
                                                VALUES),
    "scale": RANGE,
    "depth": st.one_of(st.fixed_dictionaries({"kind": st.sampled_from(["layers", "blocks", "control_points", "x"]),
                                              "low": SCALARS, "high": SCALARS}, optional={"count": SCALARS}), VALUES),
    "groups": st.one_of(st.dictionaries(st.sampled_from(["attn", "mlp", "norm", "embed", "head", "x"]), RANGE,
                                        max_size=3), VALUES),
    "operator": st.one_of(st.sampled_from(["linear", "orthogonal", "dare", "nope"]),
                          st.fixed_dictionaries({"choice": st.lists(st.sampled_from(["linear", "dare", "trim", "x"]),
                                                                    max_size=3)},
                                                optional={"dare": st.dictionaries(st.sampled_from(["density", "seed"]),
                                                                                  RANGE, max_size=2)}), VALUES),
    "baselines": st.one_of(st.fixed_dictionaries({"uniform": st.lists(SCALARS, max_size=4)}), VALUES),
    "extra": VALUES,
}
CELLS = [(layer, group) for layer in range(4) for group in ("attn", "mlp")]


@bounded(80)
@given(doc=st.fixed_dictionaries({"graft_space": st.one_of(st.just(1), SCALARS)},
                                 optional={k: v for k, v in SPACE_FIELDS.items()}))
def test_search_space_gives_a_space_or_a_usage_error(doc: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = yaml_file(Path(tmp), doc, "space.yaml")
        space = outcome(lambda: SearchSpace.from_yaml(path), (2,))
        if space is None:
            return

        def use() -> None:  # what a search does with a space before and during its trials
            space.check(4, source=str(path))
            for _name, lam, params in space.baseline_points(4, CELLS, source=str(path)):
                assert math.isfinite(lam)
                space.coefficients({k: v for k, v in params.items() if k != "operator"}, 4)
            for corner in ("low", "high"):
                params = {name: getattr(r, corner) for name, r in space.ranges(4).items()}
                coefficients = space.coefficients(params, 4)
                assert all(math.isfinite(f) for f in coefficients.layer_factors(4))

        outcome(use, (2,))


# -- benchmark rows of each published format ------------------------------------------------------------------------
FIELD_TEXT = st.one_of(st.text(max_size=30), st.text(alphabet=string.ascii_letters + " ", min_size=1, max_size=30),
                       st.text(min_size=60, max_size=80))
WORDS = st.text(alphabet=string.ascii_letters, min_size=1, max_size=20)
LIKELY_TEXT = st.one_of(WORDS, WORDS, WORDS, FIELD_TEXT)  # mostly fine, sometimes not
CELL = st.one_of(FIELD_TEXT, SCALARS, st.lists(FIELD_TEXT, max_size=2), st.dictionaries(FIELD_TEXT, FIELD_TEXT,
                                                                                       max_size=2))
SMALL_FIELD = 64  # the item bound as these properties see it, so rows cross it


def _csv(path: Path, rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(["" if c is None else c for c in row])
    path.write_text(buffer.getvalue(), encoding="utf-8", errors="replace")


def _jsonl(path: Path, rows: list[object], garbage: str) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if garbage:
        lines.insert(len(lines) // 2, garbage)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="replace")


def _row(keys: list[str]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional={k: CELL for k in keys}).map(lambda d: d)


def write_benchmark(name: str, folder: Path, rows: list[dict], garbage: str) -> Path:
    """`rows` in the published layout of benchmark `name`; returns the path data.yaml would name."""
    if name == "catqa":
        _jsonl(folder / "catqa.json", rows, garbage)
        return folder / "catqa.json"
    if name == "medqa":
        _jsonl(folder / "medqa.jsonl", rows, garbage)
        return folder / "medqa.jsonl"
    if name == "pubmedqa":
        body = {str(r.get("pubid", i)): {k: v for k, v in r.items() if k != "pubid"} for i, r in enumerate(rows)}
        (folder / "ori_pqal.json").write_text(json.dumps(body, ensure_ascii=False) + garbage, encoding="utf-8",
                                              errors="replace")
        return folder / "ori_pqal.json"
    if name == "hexphi":
        for n in range(1, 3):
            _csv(folder / "hexphi" / f"category_{n}.csv", [[r.get("instruction")] for r in rows[n - 1::2]])
        return folder / "hexphi"
    if name == "medsafetybench":
        _csv(folder / "msb" / "datasets" / "test" / "gpt4" / "med_safety_demonstrations_category_1.csv",
             [["harmful_medical_request", "x"], *[[r.get("harmful_medical_request"), r.get("x")] for r in rows]])
        return folder / "msb"
    columns = {"benign": ["id", "prompt", "type", "label", "focus", "note"],
               "medbullets4": ["question", "opa", "opb", "opc", "opd", "answer_idx"],
               "medbullets5": ["question", "opa", "opb", "opc", "opd", "ope", "answer_idx"]}[name]
    path = folder / f"{name}.csv"
    _csv(path, [columns, *[[r.get(c) for c in columns] for r in rows]])
    return path


ROW_KEYS = {
    "catqa": ["Category", "Subcategory", "Question"],
    "medqa": ["question", "options", "answer_idx", "sent1", "ending0", "ending1", "ending2", "ending3", "label"],
    "pubmedqa": ["pubid", "QUESTION", "CONTEXTS", "final_decision", "question", "context"],
    "hexphi": ["instruction"],
    "medsafetybench": ["harmful_medical_request", "x"],
    "benign": ["id", "prompt", "type", "label"],
    "medbullets4": ["question", "opa", "opb", "opc", "opd", "answer_idx"],
    "medbullets5": ["question", "opa", "opb", "opc", "opd", "ope", "answer_idx"],
}


def _plausible(name: str) -> st.SearchStrategy[dict]:
    """Rows that are mostly right, so the properties also reach the accepted side."""
    letters = st.sampled_from(["A", "B", "C", "D", "A", "B", "E", "a", "Z", ""])
    ids = st.one_of(st.integers(0, 50), st.integers(0, 50), LIKELY_TEXT)
    if name == "catqa":
        return st.fixed_dictionaries({"Category": LIKELY_TEXT, "Subcategory": LIKELY_TEXT, "Question": LIKELY_TEXT})
    if name == "medqa":  # the release's layout, or GBaker's on the hub
        return st.one_of(st.fixed_dictionaries({"question": LIKELY_TEXT, "answer_idx": letters,
                                                "options": st.fixed_dictionaries({k: LIKELY_TEXT for k in "ABCD"})}),
                         st.fixed_dictionaries({"sent1": LIKELY_TEXT, "label": st.one_of(st.integers(-2, 6), SCALARS),
                                                **{f"ending{j}": LIKELY_TEXT for j in range(4)}}))
    if name == "pubmedqa":
        return st.fixed_dictionaries({"pubid": ids, "QUESTION": LIKELY_TEXT,
                                      "CONTEXTS": st.lists(LIKELY_TEXT, max_size=3),
                                      "final_decision": st.sampled_from(["yes", "no", "maybe", "YES ", "x"])})
    if name == "benign":
        return st.fixed_dictionaries({"id": ids, "prompt": LIKELY_TEXT, "type": LIKELY_TEXT,
                                      "label": st.sampled_from(["safe", "safe", "unsafe"])})
    return st.fixed_dictionaries({k: (letters if k == "answer_idx" else LIKELY_TEXT) for k in ROW_KEYS[name]})


@pytest.mark.parametrize("name", sorted(ROW_KEYS))
def test_benchmark_rows_give_bounded_unique_items_or_an_input_error(name: str, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    monkeypatch.setattr(loaders, "MAX_FIELD_CHARS", SMALL_FIELD)

    @bounded(40)
    @given(rows=st.lists(st.one_of(_plausible(name), _plausible(name), _plausible(name), _row(ROW_KEYS[name])),
                         min_size=1, max_size=6),
           garbage=st.sampled_from(["", "", "", "", "not json", "[1, 2]", '{"a": NaN}', "\x00"]))
    def run(rows: list[dict], garbage: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            source = write_benchmark(name, Path(tmp), rows, garbage)
            items = outcome(lambda: benchmark(name).read(source), (3,))
            if items is None:
                return
            assert items and len({it.id for it in items}) == len(items)
            for it in items:
                assert all(isinstance(t, str) and len(t) <= SMALL_FIELD for t in it.texts().values())
                assert "/" not in it.id and len(it.category) <= loaders.MAX_CATEGORY_CHARS

    run()


OTHER_LAYOUTS = {  # the same benchmarks in their other published layouts
    "pubmedqa-rows": st.fixed_dictionaries({"pubid": st.one_of(st.integers(0, 9), LIKELY_TEXT), "question": LIKELY_TEXT,
                                            "context": st.one_of(st.fixed_dictionaries(
                                                {"contexts": st.lists(LIKELY_TEXT, max_size=2)}), CELL),
                                            "final_decision": st.sampled_from(["yes", "no", "maybe", "x"])}),
    "medqa-hub": st.fixed_dictionaries({"sent1": LIKELY_TEXT, "label": st.integers(-2, 6),
                                        **{f"ending{j}": LIKELY_TEXT for j in range(4)}}),
    "vqarad-osf": st.fixed_dictionaries({"image_name": st.sampled_from(["a.png", "b.png", "../x.png", "", "none.png"]),
                                         "question": LIKELY_TEXT, "answer": st.one_of(LIKELY_TEXT, SCALARS),
                                         "answer_type": st.sampled_from(["CLOSED", "OPEN", "", "x"])}),
}


def write_other_layout(layout: str, folder: Path, rows: list[dict]) -> tuple[str, Path]:
    if layout == "pubmedqa-rows":  # the hub's pqa_labeled rows, as JSONL
        _jsonl(folder / "pqa.jsonl", rows, "")
        return "pubmedqa", folder / "pqa.jsonl"
    if layout == "medqa-hub":  # GBaker/MedQA-USMLE-4-options-hf, as parquet
        pq.write_table(pa.Table.from_pylist(rows), folder / "medqa.parquet")
        return "medqa", folder / "medqa.parquet"
    images = folder / "VQA_RAD Image Folder"  # the OSF release: a JSON list beside its image folder
    images.mkdir()
    (images / "a.png").write_bytes(_png(4))
    (images / "b.png").write_bytes(b"not a png")
    (folder / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows, default=str))
    return "vqarad", folder


@pytest.mark.parametrize("layout", sorted(OTHER_LAYOUTS))
def test_other_published_layouts_give_bounded_unique_items_or_an_input_error(layout: str) -> None:
    @bounded(30)
    @given(rows=st.lists(OTHER_LAYOUTS[layout], min_size=1, max_size=5))
    def run(rows: list[dict]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            name, source = write_other_layout(layout, Path(tmp), rows)
            items = outcome(lambda: benchmark(name).read(source), (3,))
            for it in items or []:
                assert all(isinstance(t, str) for t in it.texts().values())
                if name == "vqarad":
                    image = outcome(it.load_image, (3,))
                    assert image is None or image.mode == "RGB"
            if items is not None:
                assert len({it.id for it in items}) == len(items)

    run()


def _png(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (size % 255, 0, 0)).save(out, format="PNG")
    return out.getvalue()


@bounded(30)
@given(rows=st.lists(st.fixed_dictionaries(
    {"question": st.one_of(FIELD_TEXT, st.none()), "answer": st.one_of(FIELD_TEXT, st.none()),
     "image": st.one_of(st.builds(lambda n: {"bytes": _png(n), "path": None}, st.integers(1, 8)),
                        st.builds(lambda b: {"bytes": b, "path": None}, st.binary(max_size=40)),
                        st.builds(lambda p: {"bytes": None, "path": p}, st.sampled_from(["/dev/null", "/", "x.png"])),
                        st.none())}), max_size=5))
def test_vqarad_parquet_rows_give_readable_images_or_an_input_error(rows: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test-0.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
            ("question", pa.string()), ("answer", pa.string()),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))])), path)
        items = outcome(lambda: benchmark("vqarad").read(path), (3,))
        for it in items or []:
            image = outcome(it.load_image, (3,))
            assert image is None or image.mode == "RGB"


# -- an inspect report read back by `graft recipe --from-scores` -------------------------------------------------
SCORE = st.one_of(st.floats(-1.5, 1.5), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                  st.sampled_from(["x", "-inf", "1e400", " ", "nan"]))
LAYER = st.one_of(st.integers(0, 3), st.none(), st.sampled_from([1.5, "a", -1, "inf", 2**70]))
GROUP = st.sampled_from(["attn", "mlp", "norm", "x"])


@bounded(60)
@given(cells=st.lists(st.tuples(LAYER, GROUP, SCORE), min_size=0, max_size=8),
       metric=st.sampled_from(SCORE_METRICS),
       threshold=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3)),
       above=st.booleans(), scale=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(1.0)),
       index=st.one_of(st.just({"format": "graft-inspect", "format_version": 1,
                                "sources": {"vector": "/v", "target": "/t"}}), VALUES))
def test_inspect_reports_give_a_recipe_or_an_error(cells: list[tuple], metric: str, threshold: float, above: bool,
                                                   scale: float, index: object) -> None:
    from graft.inspect.report import REPORT_FORMAT, REPORT_FORMAT_VERSION

    if isinstance(index, dict) and index.get("format") == "graft-inspect":
        index = {**index, "format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in ("v", "t"):
            (folder / name).mkdir()
        if isinstance(index, dict) and isinstance(index.get("sources"), dict):
            index["sources"] = {"vector": str(folder / "v"), "target": str(folder / "t")}
        _csv(folder / "layers.csv", [["layer", "group", metric], *[list(c) for c in cells]])
        _csv(folder / "tensors.csv", [["tensor", "layer", "group"],
                                      *[[f"model.layers.{c[0]}.{c[1]}.weight", c[0], c[1]] for c in cells]])
        (folder / "inspect.json").write_text(json.dumps(index, default=str))
        selection = outcome(lambda: recipe_from_scores(folder, metric=metric, threshold=threshold, above=above,
                                                       scale=scale), (2, 3))
        if selection is None:
            return
        assert threshold_range(metric).holds(threshold) and math.isfinite(scale)
        for _layer, group, score in selection.cells:
            assert math.isfinite(score) and group in ("attn", "mlp")
            assert (score > threshold) if above else (score < threshold)


def test_a_report_file_beyond_a_reports_size_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from graft.inspect import select
    from graft.inspect.report import REPORT_FORMAT, REPORT_FORMAT_VERSION

    _csv(tmp_path / "layers.csv", [["layer", "group", "cos_tau_med"], [0, "attn", -0.5]])
    _csv(tmp_path / "tensors.csv", [["tensor", "layer", "group"], ["model.layers.0.attn.weight", 0, "attn"]])
    (tmp_path / "inspect.json").write_text(json.dumps({"format": REPORT_FORMAT, "format_version":
                                                       REPORT_FORMAT_VERSION, "sources": {}}))
    monkeypatch.setattr(select, "MAX_REPORT_FILE_BYTES", 40)
    with pytest.raises(GraftError, match="more than a `graft inspect` report holds") as info:
        recipe_from_scores(tmp_path, vector="v", target="t")
    assert info.value.exit_code == 3


# -- every numeric flag of eval, search, inspect, recipe --from-scores and demo -----------------------------------
runner = CliRunner()
FLAG_VALUES = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from(["", "x", "1e3", "0x10", "1_000", " 7", "nan", "-inf", "1.5"]))


def _as_arg(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _parsed(text: str, integer: bool) -> float | int | None:
    """What the command line makes of `text` when it is a number of the flag's kind (None: not one)."""
    try:
        return int(text) if integer else float(text)
    except ValueError:
        return None


def _flag_property(args: Callable[[str], list[str]], flag: str, rng, reached: int, setup: Callable = lambda: None):
    """`graft ARGS` with any value of `flag`: exit 2 naming the flag when the value is outside its documented range
    (or not a number at all), else the run goes on to `reached` (a later, known stop); never exit 1."""

    @bounded(25)
    @given(value=FLAG_VALUES)
    def run(value: object) -> None:
        text = _as_arg(value)
        with tempfile.TemporaryDirectory() as tmp:
            setup()
            with no_hang():
                result = runner.invoke(app, [*args(tmp), flag, text])
            number = _parsed(text, rng.integer)
            assert result.exit_code != 1, result.output
            if number is not None and rng.holds(number):
                assert result.exit_code == reached, (text, result.exit_code, result.output)
            else:
                assert result.exit_code == 2, (text, result.exit_code, result.output)
                if number is not None:  # graft's own check: one line naming the flag
                    lines = result.stderr.strip().splitlines()
                    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], result.stderr

    run()


class Stop(GraftError):
    exit_code = 4  # a code the flags themselves never produce: the command got past its checks


@pytest.mark.parametrize("name", sorted(EVAL))
def test_every_numeric_eval_flag_is_checked_against_its_range(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from graft.evals import generation

    def stop(*_a: object, **_k: object) -> None:
        raise Stop("the model would load now")

    monkeypatch.setattr(generation.HFBackend, "load", stop)
    flag = EVAL[name].flag
    _flag_property(lambda tmp: ["eval", "model", "--tasks", "catqa", "--data", str(FIXTURE_DATA), "--out",
                                f"{tmp}/r.json"], flag, EVAL[name], Stop.exit_code)


def _search_args(tmp: str) -> list[str]:
    folder = Path(tmp)
    (folder / "eval.yaml").write_text(yaml.safe_dump({
        "graft_search_eval": 1, "data": str(FIXTURE_DATA), "safety": ["catqa"], "medical": ["medqa"],
        "over_refusal": True}))
    return ["search", "--space", "global", "--eval", str(folder / "eval.yaml"), "--trials", "10", "-t",
            str(folder / "no-target"), "--vector", str(folder / "no-vector"), "--out", str(folder / "out")]


@pytest.mark.parametrize("name", sorted(SEARCH))
def test_every_numeric_search_flag_is_checked_against_its_range(name: str) -> None:
    # Past the flags, the search stops at the vector, which does not exist: exit 3.
    _flag_property(_search_args, SEARCH[name].flag, SEARCH[name], 3)


@pytest.mark.parametrize("name", sorted(INSPECT))
def test_every_numeric_inspect_flag_is_checked_against_its_range(name: str) -> None:
    _flag_property(lambda tmp: ["inspect", "--vector", f"{tmp}/no-vector", "--storage", f"{tmp}/no.db"],
                   INSPECT[name].flag, INSPECT[name], 3)


@pytest.mark.parametrize("metric", ["cos_tau_med", "ratio"])
def test_recipe_threshold_is_checked_against_its_metrics_range(metric: str) -> None:
    # Past the flags, the report folder does not exist: exit 3.
    _flag_property(lambda tmp: ["recipe", "--from-scores", f"{tmp}/no-report", "--metric", metric, "-o",
                                f"{tmp}/r.yaml"], "--threshold", threshold_range(metric), 3)


@pytest.mark.parametrize("name", ["limit", "holdout", "trials", "seed"])
def test_every_numeric_demo_flag_is_checked_against_its_range(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import graft.toy.demo

    def stop(*_a: object, **_k: object) -> None:
        raise Stop("the demo would start now")

    monkeypatch.setattr(graft.toy.demo, "run_demo", stop)
    _flag_property(lambda tmp: ["demo", "--workdir", f"{tmp}/demo"], DEMO[name].flag, DEMO[name], Stop.exit_code)
