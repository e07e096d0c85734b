"""The FigStep tasks' images: rendered with the release's typography, or read from a data config's `figstep`
folder; and `benign-figstep`, the over-refusal check for typed images."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from graft.cli import app
from graft.errors import InputError
from graft.evals import HFBackend, evaluate, figstep, fixture_data
from graft.evals.benchmarks import SUITES, TASKS
from graft.evals.config import FIXTURES, DataConfig
from graft.evals.judges import KeywordJudge
from graft.evals.loaders import load_benign


@pytest.fixture(scope="module")
def qwen(tiny_qwen2vl):
    return HFBackend.load(tiny_qwen2vl, device="cpu", batch_size=4)


class Recording:
    """Wraps an engine and keeps every request it is asked to answer."""

    def __init__(self, engine: HFBackend):
        self.engine, self.requests = engine, []
        self._generate = engine.generate

    def __enter__(self):
        def generate(requests, *args, **kwargs):
            self.requests += list(requests)
            return self._generate(requests, *args, **kwargs)

        self.engine.generate = generate
        return self

    def __exit__(self, *exc):
        del self.engine.generate


def test_benign_figstep_is_declared_like_benign_with_images() -> None:
    task = TASKS["benign-figstep"]
    assert (task.benchmark, task.kind, task.figstep, task.needs_image) == ("benign", "benign", True, True)
    assert "benign-figstep" in SUITES["safety"] and "benign-figstep" in SUITES["all"]


def test_benign_figstep_renders_the_safe_prompts_and_scores_answered(qwen) -> None:
    """On the shipped XSTest fixture, with the real renderer: every safe prompt is typed into the release's
    760 x 760 image beside the FigStep prompt, and the score is 1 - the share the keyword detector calls refused."""
    with Recording(qwen) as rec:
        res = evaluate(qwen, tasks="benign-figstep", data=fixture_data(), max_new_tokens=5)
    items = load_benign(fixture_data().benign)
    assert len(rec.requests) == len(items) == res.benchmarks["benign-figstep"]["n"]
    for req, item in zip(sorted(rec.requests, key=lambda r: r.image.tobytes()),
                         sorted(items, key=lambda i: figstep.render(i.prompt).tobytes()), strict=True):
        assert req.prompt == figstep.FIGSTEP_PROMPT
        assert req.image.size == (760, 760)
        assert np.array_equal(np.asarray(req.image), np.asarray(figstep.render(item.prompt)))
    samples = res.samples
    refused = [KeywordJudge().refusal(s["response"]) is not None for s in samples]
    assert res.benchmarks["benign-figstep"]["score"] == pytest.approx(1 - sum(refused) / len(refused))
    assert all(s["figstep_text"].endswith("1. \n2. \n3. ") for s in samples)
    assert res.summary["over_refusal"] is None  # the text `benign` task alone defines the summary's over-refusal


def test_text_model_skips_benign_figstep_in_the_safety_suite(tiny_llama) -> None:
    res = evaluate(HFBackend.load(tiny_llama, device="cpu"), suite="safety", data=fixture_data(), limit=1,
                   max_new_tokens=2)
    assert "benign-figstep" in res.skipped and "benign" in res.benchmarks


def _data_with_images(tmp_path, make_image):
    folder = tmp_path / "figstep"
    folder.mkdir()
    data = DataConfig.from_yaml(FIXTURES / "data.yaml").model_copy(update={"figstep": folder})
    made = {}
    for item in load_benign(data.benign):
        made[item.id] = make_image(item)
        made[item.id].save(folder / f"{item.id}.png")
    return data, folder, made


def test_a_figstep_folder_replaces_the_renders(qwen, tmp_path) -> None:
    """Ready-made images (named by item id) are fed as they are, and the results say where they came from."""
    rng = np.random.default_rng(0)
    data, folder, made = _data_with_images(
        tmp_path, lambda _i: Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    with Recording(qwen) as rec:
        res = evaluate(qwen, tasks="benign-figstep", data=data, max_new_tokens=3)
    fed = sorted(np.asarray(r.image).tobytes() for r in rec.requests)
    assert fed == sorted(np.asarray(im).tobytes() for im in made.values())
    assert res.config["figstep_images"] == str(folder) and res.config["figstep_font"] is None
    assert {s["figstep_image"] for s in res.samples} == {str(folder / f"{i}.png") for i in made}


def test_a_missing_figstep_image_fails_before_any_generation(qwen, tmp_path) -> None:
    data, folder, made = _data_with_images(tmp_path, lambda _i: Image.new("RGB", (8, 8), "white"))
    gone = sorted(made)[0]
    (folder / f"{gone}.png").unlink()
    with Recording(qwen) as rec, pytest.raises(InputError, match=f"{gone}.png: missing FigStep image"):
        evaluate(qwen, tasks="benign,benign-figstep", data=data, max_new_tokens=3)
    assert rec.requests == []


def test_cli_names_the_missing_figstep_image_with_exit_code_3(tiny_qwen2vl, tmp_path) -> None:
    data, folder, made = _data_with_images(tmp_path, lambda _i: Image.new("RGB", (8, 8), "white"))
    (folder / f"{sorted(made)[-1]}.png").write_bytes(b"not a png")
    yaml_path = tmp_path / "data.yaml"
    lines = [f"{k}: {v}" for k, v in data.model_dump().items() if v is not None]
    yaml_path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", str(tiny_qwen2vl), "--tasks", "benign-figstep", "--data",
                                      str(yaml_path), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 3, result.output
    assert "cannot read this FigStep image" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_fixture_xstest_has_only_safe_prompts_scored() -> None:
    with (FIXTURES / "xstest" / "xstest_prompts.csv").open(encoding="utf-8") as f:
        safe = [r for r in csv.DictReader(f) if r["label"] == "safe"]
    assert [i.prompt for i in load_benign(fixture_data().benign)] == [r["prompt"] for r in safe]
