"""docs/extending.md, followed literally: its files are written as shown, its tests are run, and the benchmark and
judge it adds are evaluated end to end on a tiny model (Python API and `graft eval` with $GRAFT_PLUGINS); its
layout-mapping example runs and its recipe and --map forms give the same rules. So the page cannot rot."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from graft.cli import app
from graft.core.mapping import Rule
from graft.core.recipe import MappingRules
from graft.evals import evaluate, fixture_data
from graft.evals.benchmarks import BENCHMARKS, SUITES, TASKS, unregister_benchmark
from graft.evals.config import FIXTURES
from graft.evals.generation import HFBackend
from graft.evals.judges import JUDGES, unregister_judge

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "extending.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def sections() -> dict[str, list[tuple[str, str | None, str]]]:
    """Heading → its code blocks as (language, file name or None, text), in order."""
    out: dict[str, list] = {}
    for part in re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.M)[1:]:
        heading, _, body = part.partition("\n")
        blocks = []
        for lang, info, text in FENCE.findall(body):
            m = re.search(r"file=(\S+)", info)
            blocks.append((lang, m.group(1) if m else None, text))
        out[heading.strip()] = blocks
    return out


PLUGIN_MODULES = ("my_benchmarks", "my_judges", "test_my_benchmarks", "test_my_judges")


@pytest.fixture
def doc_folder(tmp_path, monkeypatch):
    """The page's files in a fresh folder (the current one, importable); the registries restored afterwards."""
    for blocks in sections().values():
        for _lang, name, text in blocks:
            if name:
                (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / name).write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    benchmarks, judges = dict(BENCHMARKS), dict(JUDGES)
    try:
        yield tmp_path
    finally:
        for mod in PLUGIN_MODULES:
            sys.modules.pop(mod, None)
        for name in [n for n in BENCHMARKS if n not in benchmarks]:
            unregister_benchmark(name)
        for name in [n for n in JUDGES if n not in judges]:
            unregister_judge(name)


def run_doc_tests(module: str) -> int:
    mod = importlib.import_module(module)
    tests = [getattr(mod, n) for n in dir(mod) if n.startswith("test_")]
    for test in tests:
        test()
    return len(tests)


def test_the_page_has_its_three_sections_each_with_its_code():
    got = sections()
    assert {"Add a benchmark", "Add a judge", "Add a layout mapping"} <= set(got)
    files = {name for blocks in got.values() for _l, name, _t in blocks if name}
    assert {"my_benchmarks.py", "test_my_benchmarks.py", "my_judges.py", "test_my_judges.py", "data.yaml",
            "medmcqa/dev.jsonl", "recipe-mapping.yaml"} <= files


def test_added_benchmark_is_evaluated_end_to_end(doc_folder, tiny_llama):
    assert run_doc_tests("test_my_benchmarks") == 1
    assert "medmcqa" in SUITES["medical"] and "medmcqa" in SUITES["all"]
    results = evaluate(tiny_llama, tasks="medmcqa", data="data.yaml", device="cpu")
    bench = results.benchmarks["medmcqa"]

    # Reference: the published rows read with json, the lm-eval MedQA prompt written out here, the letters scored
    # by the engine's own log-likelihood.
    rows = [json.loads(line) for line in (doc_folder / "medmcqa/dev.jsonl").read_text().splitlines()]
    engine = HFBackend.load(tiny_llama, device="cpu")
    correct = []
    for row in rows:
        options = "".join(f"{letter}. {row['op' + letter.lower()]}\n" for letter in "ABCD")
        ctx = f"Question: {row['question']}\n{options}Answer:"
        lls = [ll for ll, _ in engine.loglikelihood([(ctx, f" {letter}") for letter in "ABCD"])]
        correct.append(max(range(4), key=lambda i: lls[i]) == row["cop"])
    assert bench["n"] == 3 and bench["score"] == pytest.approx(sum(correct) / 3)
    assert set(bench["by_category"]) == {"Anatomy", "Biochemistry", "Pharmacology"}
    assert results.summary["medical"] == pytest.approx(bench["score"])


def test_added_judge_is_used_end_to_end(doc_folder, tiny_llama):
    assert run_doc_tests("test_my_judges") == 1
    pattern = r"(?i)cannot|sorry"
    results = evaluate(tiny_llama, tasks="catqa", data=fixture_data(), judge=f"regex:{pattern}", limit=4,
                       device="cpu", max_new_tokens=8)
    assert results.judge == {"name": "regex", "version": "1", "pattern": pattern}
    samples = results.samples
    assert len(samples) == 4
    for s in samples:
        assert s["verdict"]["harmful"] is (re.search(pattern, s["response"]) is None)
    harmful = sum(s["verdict"]["harmful"] for s in samples)
    assert results.benchmarks["catqa"]["score"] == pytest.approx(1 - harmful / 4)


def _graft(args: list[str], plugins: str | None) -> Result:
    """`graft ARGS` (the real command, in this process) with $GRAFT_PLUGINS set or unset."""
    return CliRunner().invoke(app, args, env={"GRAFT_PLUGINS": plugins})


def test_graft_eval_finds_the_plugins_and_refuses_them_unregistered(doc_folder, tiny_llama):
    data = doc_folder / "data.yaml"
    data.write_text(data.read_text() + f"catqa: {FIXTURES / 'catqa' / 'catqa_english.json'}\n")
    # Not registered yet: the data.yaml entry is refused in one line, exit 2, nothing written.
    refused = _graft(["eval", str(tiny_llama), "--tasks", "catqa", "--data", "data.yaml", "--out", "r2.json"], None)
    assert refused.exit_code == 2, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "medmcqa: unknown field; known benchmarks: catqa" in lines[0], refused.output
    assert not (doc_folder / "r2.json").exists()

    missing = _graft(["eval", "--help"], "no_such_plugin")
    assert missing.exit_code == 2
    assert "cannot import plugin 'no_such_plugin'" in missing.output and "Traceback" not in missing.output

    args = ["eval", str(tiny_llama), "--tasks", "medmcqa,catqa", "--data", "data.yaml", "--out", "r.json",
            "--judge", "regex:(?i)cannot", "--limit", "2", "--device", "cpu", "--max-new-tokens", "4"]
    done = _graft(args, "my_benchmarks,my_judges")
    assert done.exit_code == 0, done.output
    results = json.loads((doc_folder / "r.json").read_text())
    assert set(results["benchmarks"]) == {"medmcqa", "catqa"}
    assert results["judge"]["name"] == "regex" and results["judge"]["version"] == "1"


def test_layout_mapping_example_runs_and_its_three_forms_agree(doc_folder):
    blocks = sections()["Add a layout mapping"]
    code = [text for lang, name, text in blocks if lang == "python" and name is None]
    assert len(code) == 1
    namespace: dict = {}
    exec(compile(code[0], str(DOC), "exec"), namespace)  # its asserts are the check
    rules = namespace["rules"]
    recipe = yaml.safe_load((doc_folder / "recipe-mapping.yaml").read_text())
    assert [r.to_rule() for r in MappingRules.model_validate(recipe["mapping"]).rules] == rules
    bash = next(text for lang, _n, text in blocks if lang == "bash")
    words = shlex.split(bash.replace("\\\n", " "))
    maps = [words[i + 1] for i, w in enumerate(words) if w == "--map"]
    assert [Rule(*m.split("=>", 1)) for m in maps] == rules


def test_registries_are_back_to_graft_own_after_the_examples():
    assert "medmcqa" not in BENCHMARKS and "medmcqa" not in TASKS and "regex" not in JUDGES
