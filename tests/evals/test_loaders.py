"""Loaders read the published layouts and reject malformed files with the file, row and field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graft.errors import InputError, UsageError
from graft.evals import DataConfig, HubSource, fixture_data
from graft.evals.benchmarks import BENCHMARKS
from graft.evals.config import FIXTURES
from graft.evals.loaders import (
    HEXPHI_CATEGORIES,
    load_catqa,
    load_hexphi,
    load_medbullets4,
    load_medbullets5,
    load_medqa,
    load_medsafetybench,
    load_pubmedqa,
    load_vqarad,
)


def test_fixture_counts_and_fields():
    data = fixture_data()
    counts = {name: len(bench.load(data.source(name))) for name, bench in BENCHMARKS.items()}
    # Counted independently from the files: lines, rows, keys.
    assert counts["catqa"] == len((FIXTURES / "catqa/catqa_english.json").read_text().splitlines())
    assert counts["hexphi"] == sum(len(p.read_text().splitlines()) for p in (FIXTURES / "hexphi").glob("*.csv"))
    assert counts["pubmedqa"] == len(json.loads((FIXTURES / "pubmedqa/ori_pqal.json").read_text()))
    assert counts["benign"] == sum(",safe," in line for line in (FIXTURES / "xstest/xstest_prompts.csv").open())
    assert counts["medsafetybench"] == sum(len(p.read_text().splitlines()) - 1
                                           for p in (FIXTURES / "medsafetybench").rglob("*.csv"))


def test_hexphi_categories_follow_file_numbers():
    items = load_hexphi(fixture_data().hexphi)
    assert {it.category for it in items} == {HEXPHI_CATEGORIES[n] for n in (1, 3, 4)}
    assert HEXPHI_CATEGORIES[2] not in {it.category for it in items}  # withheld in the public release


def test_medqa_and_medbullets_answers():
    items = load_medqa(fixture_data().medqa)
    first = json.loads((FIXTURES / "medqa/phrases_no_exclude_test.jsonl").read_text().splitlines()[0])
    assert items[0].answer == first["answer_idx"]
    assert items[0].choices["ABCD".index(first["answer_idx"])] == first["answer"]
    five = load_medbullets5(fixture_data().medbullets5)
    assert all(len(it.choices) == 5 for it in five)


def test_vqarad_closed_and_open_from_answers():
    items = load_vqarad(fixture_data().vqarad)
    assert {it.answer_type for it in items} == {"closed", "open"}
    assert all((it.answer in ("yes", "no")) == (it.answer_type == "closed") for it in items)
    assert items[0].load_image().size == (32, 32)


def test_vqarad_osf_json_layout(tmp_path):
    from PIL import Image

    (tmp_path / "VQA_RAD Image Folder").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "VQA_RAD Image Folder" / "synpic1.jpg")
    rows = [{"image_name": "synpic1.jpg", "question": "is it placeholder", "answer": "Yes",
             "answer_type": "CLOSED"},
            {"image_name": "synpic1.jpg", "question": "how many placeholder", "answer": "2", "answer_type": "OPEN"}]
    (tmp_path / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    items = load_vqarad(tmp_path)
    assert [it.answer_type for it in items] == ["closed", "open"]
    assert items[0].load_image().size == (8, 8)


def test_catqa_missing_field_names_file_row_field(tmp_path):
    p = tmp_path / "catqa_english.json"
    p.write_text('{"Category": "c", "Subcategory": "s", "Question": "q"}\n{"Category": "c", "Subcategory": "s"}\n')
    with pytest.raises(InputError, match=r"catqa_english\.json:2: missing field 'Question'"):
        load_catqa(p)


def test_catqa_bad_json_line(tmp_path):
    p = tmp_path / "catqa_english.json"
    p.write_text('{"Category": "c", "Question": "q"}\n{not json\n')
    with pytest.raises(InputError, match=r"catqa_english\.json:2: not valid JSON"):
        load_catqa(p)


def test_medsafetybench_wrong_column(tmp_path):
    d = tmp_path / "datasets" / "test" / "gpt4"
    d.mkdir(parents=True)
    (d / "med_safety_demonstrations_category_1.csv").write_text("request\nsomething\n")
    with pytest.raises(InputError, match=r"category_1\.csv:2: missing field 'harmful_medical_request'"):
        load_medsafetybench(tmp_path)


def test_hexphi_empty_folder(tmp_path):
    with pytest.raises(InputError, match=r"no category_N\.csv"):
        load_hexphi(tmp_path)


def test_pubmedqa_bad_decision(tmp_path):
    p = tmp_path / "ori_pqal.json"
    p.write_text(json.dumps({"1": {"QUESTION": "q", "CONTEXTS": ["c"], "final_decision": "perhaps"}}))
    with pytest.raises(InputError, match=r"ori_pqal\.json:PMID 1: field 'final_decision' should be yes/no/maybe"):
        load_pubmedqa(p)


def test_pubmedqa_hub_row_layout(tmp_path):
    p = tmp_path / "pqa_labeled.jsonl"
    p.write_text(json.dumps({"pubid": 7, "question": "q", "context": {"contexts": ["a", "b"]},
                             "final_decision": "no"}) + "\n")
    (item,) = load_pubmedqa(p)
    assert item.context == "a\nb" and item.answer == "no"


def test_medqa_bad_answer_letter(tmp_path):
    src = (FIXTURES / "medqa/phrases_no_exclude_test.jsonl").read_text().splitlines()
    bad = json.loads(src[1])
    bad["answer_idx"] = "F"
    p = tmp_path / "test.jsonl"
    p.write_text(src[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputError, match=r"test\.jsonl:2: field 'answer_idx' should be one of A, B, C, D"):
        load_medqa(p)


def test_medbullets_missing_option_column(tmp_path):
    p = tmp_path / "medbullets_op5.csv"
    shutil.copy(FIXTURES / "medbullets/medbullets_op4.csv", p)
    with pytest.raises(InputError, match=r"medbullets_op5\.csv:2: missing field 'ope'"):
        load_medbullets5(p)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(InputError, match=r"nothing\.json: not found"):
        load_catqa(tmp_path / "nothing.json")


def test_data_yaml_relative_paths_and_unknown_keys(tmp_path):
    (tmp_path / "data.yaml").write_text("catqa: sub/catqa.json\nmedqa: {hub: some/dataset, split: test}\n")
    cfg = DataConfig.from_yaml(tmp_path / "data.yaml")
    assert cfg.catqa == tmp_path / "sub/catqa.json"
    assert cfg.medqa == HubSource(hub="some/dataset", split="test")
    (tmp_path / "bad.yaml").write_text("catqa: a.json\ncatqaa: b.json\n")
    with pytest.raises(UsageError, match="catqaa: unknown field"):
        DataConfig.from_yaml(tmp_path / "bad.yaml")
    with pytest.raises(UsageError, match="no data for benchmark 'medsafetybench'"):
        cfg.source("medsafetybench")
    assert cfg.source("vqarad") == HubSource(hub="flaviagiammarino/vqa-rad", split="test")  # its public source


def test_hub_source_offline_fails_with_the_id():
    """The hub path up to the network boundary: `datasets` offline, our error names the dataset id."""
    code = ("from graft.evals.loaders import load_medqa; from graft.evals import HubSource\n"
            "load_medqa(HubSource(hub='graft-test/no-such-medqa', split='test'))")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("graft.errors.InputError: hub dataset 'graft-test/no-such-medqa'")
    assert "point data.yaml at the local copy" in last


def test_csv_with_byte_order_mark(tmp_path):
    """Spreadsheet exports often start with a BOM; the header must still read `question`."""
    p = tmp_path / "medbullets_op4.csv"
    p.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "medbullets/medbullets_op4.csv").read_bytes())
    assert len(load_medbullets4(p)) == len(load_medbullets4(FIXTURES / "medbullets/medbullets_op4.csv"))


@pytest.mark.parametrize(("name", "split"), [("catqa", "train"), ("medqa", "test"), ("vqarad", "test")])
def test_hub_path_reads_the_same_rows(name, split):
    """`datasets.load_dataset` on a local folder runs the hub code path without a network."""
    local = BENCHMARKS[name].load(getattr(fixture_data(), name))
    via_datasets = BENCHMARKS[name].load(HubSource(hub=str(FIXTURES / name), split=split))
    key = [(it.prompt, it.category, it.answer, it.choices, it.answer_type) for it in local]
    assert [(it.prompt, it.category, it.answer, it.choices, it.answer_type) for it in via_datasets] == key
    if name == "vqarad":
        assert via_datasets[0].load_image().size == local[0].load_image().size
