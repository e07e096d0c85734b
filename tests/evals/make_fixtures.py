"""Regenerate graft/evals/fixtures: tiny synthetic files in the real benchmark layouts.

Every text is a placeholder written for graft (no benchmark text is copied); images are small synthetic
drawings. Run `python tests/evals/make_fixtures.py` after changing a layout; the output is deterministic.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2] / "graft" / "evals" / "fixtures"

TOPICS = ["alpha", "beta", "gamma", "delta"]


def _write_csv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def catqa() -> None:
    # catqa_english.json is JSON lines with Category / Subcategory / Question.
    cats = {"Illegal Activity": ["Drug", "Theft"], "Malware Viruses": ["Worms", "Spyware"],
            "Physical Harm": ["Weapons", "Self Harm"]}
    lines = []
    for ci, (cat, subs) in enumerate(cats.items()):
        for si, sub in enumerate(subs):
            for q in range(2):
                t = TOPICS[(ci + si + q) % 4]
                lines.append({"Category": cat, "Subcategory": sub,
                              "Question": f"How can I do placeholder task {t} number {ci}{si}{q}?"})
    path = ROOT / "catqa" / "catqa_english.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


def hexphi() -> None:
    # category_N.csv, no header, one instruction a row; the public release has no category_2.csv.
    for n in (1, 3, 4):
        rows = [[f"Write a placeholder guide for task {TOPICS[(n + i) % 4]} in group {n}."] for i in range(3)]
        _write_csv(ROOT / "hexphi" / f"category_{n}.csv", None, rows)


def medsafetybench() -> None:
    for gen in ("gpt4", "llama2"):
        for n in (1, 2):
            rows = [[f"Explain how a clinician could do placeholder harm {TOPICS[(n + i) % 4]} ({gen} {n}{i})."]
                    for i in range(2)]
            _write_csv(ROOT / "medsafetybench" / "datasets" / "test" / gen
                       / f"med_safety_demonstrations_category_{n}.csv", ["harmful_medical_request"], rows)


def benign() -> None:
    # XSTest v2 layout: id,prompt,type,label,focus,note; only label == "safe" rows are used.
    rows = []
    for i in range(6):
        label = "safe" if i < 4 else "unsafe"
        rows.append([str(i + 1), f"How do I kill a placeholder process {TOPICS[i % 4]} on my computer?",
                     "homonyms" if i % 2 == 0 else "safe_contexts", label, "kill", ""])
    _write_csv(ROOT / "xstest" / "xstest_prompts.csv", ["id", "prompt", "type", "label", "focus", "note"], rows)


def pubmedqa() -> None:
    # ori_pqal.json: {PMID: {QUESTION, CONTEXTS, LABELS, MESHES, final_decision, LONG_ANSWER, ...}}.
    data = {}
    for i, dec in enumerate(["yes", "no", "maybe", "yes", "no", "yes"]):
        data[str(10000 + i)] = {
            "QUESTION": f"Does placeholder treatment {TOPICS[i % 4]} help patients?",
            "CONTEXTS": [f"Placeholder background sentence {i} about treatment {TOPICS[i % 4]}.",
                         f"Placeholder result sentence {i} with outcome {TOPICS[(i + 1) % 4]}."],
            "LABELS": ["BACKGROUND", "RESULTS"],
            "MESHES": ["Humans"],
            "YEAR": "2000",
            "reasoning_required_pred": dec,
            "reasoning_free_pred": dec,
            "final_decision": dec,
            "LONG_ANSWER": f"Placeholder conclusion {i}.",
        }
    path = ROOT / "pubmedqa" / "ori_pqal.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def medqa() -> None:
    # MedQA-USMLE 4_options JSONL: question, answer, options {A..D}, meta_info, answer_idx.
    lines = []
    for i in range(6):
        opts = {k: f"placeholder option {k.lower()} {TOPICS[(i + j) % 4]}" for j, k in enumerate("ABCD")}
        idx = "ABCD"[i % 4]
        lines.append({"question": f"A placeholder patient {i} presents with sign {TOPICS[i % 4]}. "
                                  "What is the next step?",
                      "answer": opts[idx], "options": opts, "meta_info": "step1", "answer_idx": idx})
    path = ROOT / "medqa" / "phrases_no_exclude_test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


def medbullets() -> None:
    # medbullets_op4.csv / medbullets_op5.csv: question, opa..opd(/ope), answer_idx, answer, explanation, link.
    for n in (4, 5):
        letters = "ABCDE"[:n]
        cols = ["question"] + [f"op{c}" for c in "abcde"[:n]] + ["answer_idx", "answer", "explanation", "link"]
        rows = []
        for i in range(5):
            opts = [f"placeholder choice {c} {TOPICS[(i + j) % 4]}" for j, c in enumerate(letters.lower())]
            idx = letters[i % n]
            rows.append([f"A placeholder case {i} with finding {TOPICS[i % 4]}. Which is most likely?", *opts,
                         idx, opts[letters.index(idx)], "Placeholder explanation.", ""])
        _write_csv(ROOT / "medbullets" / f"medbullets_op{n}.csv", cols, rows)


def vqarad() -> None:
    # flaviagiammarino/vqa-rad parquet: image {bytes, path}, question, answer.
    rows = []
    qa = [("is there a placeholder finding", "yes"), ("is the placeholder organ enlarged", "no"),
          ("what organ is shown", "liver"), ("where is the placeholder lesion", "left lung"),
          ("is this an axial image", "yes"), ("what modality is used", "ct")]
    for i, (q, a) in enumerate(qa):
        im = Image.new("RGB", (32, 32), (20 * i, 40, 90))
        ImageDraw.Draw(im).ellipse((4 + i, 6, 20 + i, 26), fill=(230, 230, 230))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        rows.append({"image": {"bytes": buf.getvalue(), "path": f"synth_{i}.png"}, "question": q, "answer": a})
    path = ROOT / "vqarad" / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


if __name__ == "__main__":
    catqa()
    hexphi()
    medsafetybench()
    benign()
    pubmedqa()
    medqa()
    medbullets()
    vqarad()
    print(f"wrote fixtures under {ROOT}")
