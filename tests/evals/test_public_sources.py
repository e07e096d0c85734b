"""Benchmarks by name: a benchmark that data.yaml leaves out (or every one, without --data) is read from its
public hub dataset. Tested up to the network boundary: `datasets` and `huggingface_hub` run offline
(HF_DATASETS_OFFLINE, HF_HUB_OFFLINE) against caches in tmp_path laid out as they lay them out themselves: a
`datasets` cache written by `datasets`' own Parquet builder under the repository's name (owner___name/config/
version/hash, what `load_dataset` leaves behind online), and a hub cache snapshot (datasets--owner--name/snapshots/
COMMIT, refs/main) for HEx-PHI's files. A load succeeds only for the exact dataset id, config and split cached, so
the ids graft asks for are asserted by the loads themselves, and again in the results' record of its sources."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graft.evals.benchmarks import BENCHMARKS
from graft.evals.config import FIXTURES, DataConfig, fixture_data
from graft.evals.sources import HubSource

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a snapshot's commit, as the hub cache names its folder

# What graft reads when data.yaml says nothing, checked against what lm-eval's task YAMLs and the authors publish.
EXPECTED = {
    "catqa": HubSource(hub="declare-lab/CategoricalHarmfulQA", split="en"),
    "hexphi": HubSource(hub="LLM-Tuning-Safety/HEx-PHI", layout="files"),
    "benign": HubSource(hub="Paul/XSTest", split="train"),
    "pubmedqa": HubSource(hub="qiaojin/PubMedQA", name="pqa_labeled", split="train"),
    "medqa": HubSource(hub="GBaker/MedQA-USMLE-4-options-hf", split="test"),
    "vqarad": HubSource(hub="flaviagiammarino/vqa-rad", split="test"),
}


def test_every_benchmark_has_a_public_source_or_says_where_it_comes_from():
    assert {name: b.public for name, b in BENCHMARKS.items() if b.public is not None} == EXPECTED
    for name in ("medsafetybench", "medbullets4", "medbullets5"):
        assert BENCHMARKS[name].public is None and "git clone https://github.com/" in BENCHMARKS[name].origin
    assert DataConfig().source("medqa") == EXPECTED["medqa"]
    given = DataConfig.from_mapping({"medqa": str(FIXTURES / "medqa/phrases_no_exclude_test.jsonl")})
    assert given.source("medqa") == FIXTURES / "medqa/phrases_no_exclude_test.jsonl"  # data.yaml overrides
    assert given.source("catqa") == EXPECTED["catqa"]


def _hub_rows(name: str) -> list[dict]:
    """The fixture items in the layout each public hub dataset has (its columns), converted independently of
    graft's loaders."""
    if name == "catqa":
        return [json.loads(line) for line in (FIXTURES / "catqa/catqa_english.json").read_text().splitlines()]
    if name == "benign":
        with open(FIXTURES / "xstest/xstest_prompts.csv", newline="") as f:
            return [{k: v for k, v in row.items()} for row in csv.DictReader(f)]
    if name == "pubmedqa":
        data = json.loads((FIXTURES / "pubmedqa/ori_pqal.json").read_text())
        return [{"pubid": int(pmid), "question": r["QUESTION"], "final_decision": r["final_decision"],
                 "long_answer": r["LONG_ANSWER"],
                 "context": {"contexts": r["CONTEXTS"], "labels": r["LABELS"], "meshes": r["MESHES"]}}
                for pmid, r in data.items()]
    if name == "medqa":
        rows = [json.loads(line) for line in
                (FIXTURES / "medqa/phrases_no_exclude_test.jsonl").read_text().splitlines()]
        return [{"id": f"test-{i}", "sent1": r["question"], "sent2": "", "label": "ABCD".index(r["answer_idx"]),
                 **{f"ending{j}": r["options"][k] for j, k in enumerate("ABCD")}} for i, r in enumerate(rows)]
    if name == "vqarad":
        return pq.read_table(FIXTURES / "vqarad/data/test-00000-of-00001.parquet").to_pylist()
    raise AssertionError(name)


def _cache_dataset(cache: Path, src: HubSource, rows: list[dict], work: Path) -> None:
    """Prepare `rows` as split `src.split` of `src.hub` (config `src.name`) with `datasets`' own Parquet builder,
    then place it where `load_dataset(src.hub, src.name)` online would have left it: owner___name/config/..."""
    from datasets import Features, Image
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, repo = src.hub.split("/")
    parquet = work / f"{repo}-{src.split}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    staging = work / f"staging-{repo}"
    features = None
    if "image" in rows[0]:  # VQA-RAD's hub copy declares an Image feature, so rows come back as PIL images
        table = pq.read_table(parquet)
        features = Features.from_arrow_schema(table.schema)
        features["image"] = Image()
    builder = Parquet(cache_dir=str(staging), dataset_name=repo, config_name=src.name or "default",
                      data_files={src.split: [str(parquet)]}, hash=COMMIT[:16], features=features)
    builder.download_and_prepare()
    (built,) = [p for p in staging.iterdir() if p.is_dir()]
    (config_dir,) = list(built.iterdir())
    target = cache / f"{owner}___{built.name}" / (src.name or "default")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(config_dir), str(target))


def _cache_snapshot(hub_cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """A hub cache snapshot of a dataset repository, as huggingface_hub lays it out (blobs, snapshot links, refs)."""
    import hashlib

    repo = hub_cache / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    work = tmp_path_factory.mktemp("hub_rows")
    for name, src in EXPECTED.items():
        if src.layout == "rows":
            _cache_dataset(home / "datasets", src, _hub_rows(name), work)
    _cache_snapshot(home / "hub", EXPECTED["hexphi"].hub,
                    {p.name: p.read_bytes() for p in (FIXTURES / "hexphi").glob("category_*.csv")})
    return home


def _offline_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    return {**env, "HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets"), "HF_HUB_CACHE": str(home / "hub"),
            "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_public_sources_read_the_same_items_as_the_published_files(hf_home):
    """Each public hub dataset (cached) gives the items the same rows give in the authors' file layout."""
    code = ("import json; from graft.evals.benchmarks import BENCHMARKS; from graft.evals.config import DataConfig\n"
            "out = {}\n"
            f"for name in {sorted(EXPECTED)!r}:\n"
            "    items = BENCHMARKS[name].read(DataConfig().source(name))\n"
            "    out[name] = [[it.prompt, it.answer, list(it.choices or ()), it.context, it.answer_type,\n"
            "                  it.load_image().size if it.image is not None else None] for it in items]\n"
            "print(json.dumps(out))")
    proc = _python(code, _offline_env(hf_home))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    local = fixture_data()
    for name in EXPECTED:
        want = [[it.prompt, it.answer, list(it.choices or ()), it.context, it.answer_type,
                 list(it.load_image().size) if it.image is not None else None]
                for it in BENCHMARKS[name].read(local.source(name))]
        assert got[name] == want, name


def test_eval_by_name_without_data_yaml(hf_home, tiny_llama, tmp_path):
    """`graft eval MODEL --tasks ...` with no --data: every task from its public dataset, recorded in the results;
    --data overrides the tasks it names."""
    data = tmp_path / "data.yaml"
    data.write_text(f"medqa: {FIXTURES / 'medqa/phrases_no_exclude_test.jsonl'}\n")
    out = tmp_path / "results.json"
    args = ["eval", str(tiny_llama), "--tasks", "catqa,hexphi,benign,pubmedqa,medqa", "--data", str(data),
            "--out", str(out), "--limit", "2", "--max-new-tokens", "2", "--device", "cpu", "-q"]
    proc = subprocess.run([sys.executable, "-m", "graft.cli", *args], env=_offline_env(hf_home), capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["config"]["data"] == {
        "catqa": "hub:declare-lab/CategoricalHarmfulQA (split en)",
        "hexphi": "hub:LLM-Tuning-Safety/HEx-PHI (its files)",
        "benign": "hub:Paul/XSTest (split train)",
        "pubmedqa": "hub:qiaojin/PubMedQA (config pqa_labeled, split train)",
        "medqa": str(FIXTURES / "medqa/phrases_no_exclude_test.jsonl"),
    }
    assert {t: b["n"] for t, b in res["benchmarks"].items()} == dict.fromkeys(res["config"]["data"], 2)


def test_offline_without_a_cached_copy_names_the_dataset_and_the_local_way(tmp_path, tiny_llama):
    proc = subprocess.run([sys.executable, "-m", "graft.cli", "eval", str(tiny_llama), "--tasks", "catqa,medqa",
                           "--out", str(tmp_path / "r.json"), "--device", "cpu"],
                          env=_offline_env(tmp_path / "empty_hf_home"), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line == ("error: hub dataset 'declare-lab/CategoricalHarmfulQA' (split en) could not be loaded: offline, "
                    "and it is not in the hub cache; download it and point data.yaml at the local copy "
                    "(--data data.yaml), or go online")
    assert not (tmp_path / "r.json").exists()


def test_gated_without_token_says_how_to_get_access(monkeypatch):
    """`datasets`' own error for a gated set without a token becomes one line naming the dataset and HF_TOKEN."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    from graft.errors import InputError
    from graft.evals.loaders import load_benign

    def gated(path, *args, **kwargs):  # what datasets raises for a 401 on a gated repository
        raise DatasetNotFoundError(f"Dataset '{path}' is a gated dataset on the Hub. You must be authenticated to "
                                   "access it.")

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(InputError) as err:
        load_benign(EXPECTED["benign"])
    assert str(err.value) == ("hub dataset 'Paul/XSTest' (split train) could not be loaded: it is gated: accept its "
                              "terms at https://huggingface.co/datasets/Paul/XSTest and set HF_TOKEN (or run `hf auth "
                              "login`); download it and point data.yaml at the local copy (--data data.yaml), or go "
                              "online")


def test_suite_skips_what_has_no_public_copy_and_no_entry(tiny_llama):
    """In a suite, a task with neither a data.yaml entry nor a public source is skipped, saying why; named
    explicitly it is a usage error naming where it comes from (test_suite.test_usage_errors)."""
    from graft.evals import evaluate

    local = {name: str(fixture_data().source(name)) for name in ("pubmedqa", "medqa")}
    res = evaluate(tiny_llama, suite="medical", data=local, limit=1, device="cpu")
    assert sorted(res.benchmarks) == ["medqa", "pubmedqa"]
    reason = "no public hub copy of '{}' and no entry in the data config"
    assert res.skipped == {"medbullets4": reason.format("medbullets4"), "medbullets5": reason.format("medbullets5"),
                           "vqarad": "text-only model"}


def test_search_eval_yaml_without_data_reads_the_public_sources(tmp_path, monkeypatch):
    """eval.yaml's `data` is optional: the search sizes its stages on the same public sources `graft eval` reads."""
    from dataclasses import replace

    from graft.search.config import SearchEvalConfig
    from graft.search.evaluation import count_items

    (tmp_path / "eval.yaml").write_text("graft_search_eval: 1\nsafety: [catqa]\nmedical: [medqa]\nholdout: 0.5\n")
    config = SearchEvalConfig.from_yaml(tmp_path / "eval.yaml")
    assert config.data is None
    asked: list[tuple[str, object]] = []
    for name in ("catqa", "medqa"):
        bench = BENCHMARKS[name]

        def read_fixture(src, bench=bench):  # the network boundary: record the source, read the fixture instead
            asked.append((bench.name, src))
            return bench.load(fixture_data().source(bench.name))

        monkeypatch.setitem(BENCHMARKS, name, replace(bench, load=read_fixture))
    counts = count_items(config, config.report_stage("heldout"))
    assert sorted(asked) == [("catqa", EXPECTED["catqa"]), ("medqa", EXPECTED["medqa"])]
    local = {n: len(BENCHMARKS[n].read(fixture_data().source(n))) for n in ("catqa", "medqa")}
    assert counts["catqa"] + counts["medqa"] < sum(local.values()) and min(counts.values()) > 0  # the held-out half


def test_a_pinned_revision_reaches_the_hub(hf_home, monkeypatch):
    """No built-in source pins a revision (none could be checked offline); a data.yaml entry that pins one reaches
    `datasets` and `huggingface_hub` as asked, and the results name it."""
    import datasets

    from graft.errors import InputError

    assert all(src.revision is None for src in EXPECTED.values())
    pinned = DataConfig.from_mapping({
        "pubmedqa": {"hub": "qiaojin/PubMedQA", "name": "pqa_labeled", "split": "train", "revision": COMMIT},
        "hexphi": {"hub": "LLM-Tuning-Safety/HEx-PHI", "layout": "files", "revision": COMMIT}})
    asked: list[dict] = []

    def load_dataset(path, name=None, **kwargs):  # the network boundary: what graft asks for
        asked.append({"path": path, "name": name, **kwargs})
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(InputError, match="qiaojin/PubMedQA"):
        BENCHMARKS["pubmedqa"].read(pinned.source("pubmedqa"))
    assert asked == [{"path": "qiaojin/PubMedQA", "name": "pqa_labeled", "split": "train", "revision": COMMIT}]
    assert str(pinned.source("pubmedqa")) == f"hub:qiaojin/PubMedQA@{COMMIT} (config pqa_labeled, split train)"
    # a files snapshot: the cached commit reads, any other commit is not there (offline)
    code = ("import json; from graft.evals.benchmarks import BENCHMARKS; from graft.evals.sources import HubSource\n"
            "for rev in ({!r}, {!r}):\n"
            "    src = HubSource(hub='LLM-Tuning-Safety/HEx-PHI', layout='files', revision=rev)\n"
            "    try: print(len(BENCHMARKS['hexphi'].read(src)))\n"
            "    except Exception as e: print(type(e).__name__)\n").format(COMMIT, "f" * 40)
    proc = _python(code, _offline_env(hf_home))
    assert proc.returncode == 0, proc.stderr
    local = len(BENCHMARKS["hexphi"].read(fixture_data().source("hexphi")))
    assert proc.stdout.split() == [str(local), "InputError"]
