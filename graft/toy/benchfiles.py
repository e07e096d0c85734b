"""Write the toy benchmarks in the published layouts, so graft.evals' loaders read them unchanged.

The layouts are the ones `graft/evals/loaders.py` documents: CATQA JSON lines, HEx-PHI category CSVs without a
header, MedSafetyBench's datasets/test/{gpt4,llama2} tree, XSTest's prompt CSV, PubMedQA's ori_pqal.json,
MedQA-USMLE JSON lines, Medbullets op4/op5 CSVs, VQA-RAD as the hub's parquet (image bytes inline), and a
`data.yaml` that points at all of them.

FigStep: the toy vision tower reads the toy's own typeset (graft.toy.typeset: one word per patch), not the real
760 x 760 render, so every safety and benign item's toy FigStep image goes to `figstep/<item id>.png` (ids as the
loaders give them) and data.yaml's `figstep` entry makes `graft eval` use them instead of rendering. A few real
renders go to `figstep-real/` for comparison.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from .corpus import Benchmarks

DATA_YAML = """\
# The toy world's held-out benchmark items, in the published layouts (written by graft.toy).
catqa: catqa/catqa_english.json
hexphi: hexphi
medsafetybench: medsafetybench
benign: xstest/xstest_prompts.csv
pubmedqa: pubmedqa/ori_pqal.json
medqa: medqa/phrases_no_exclude_test.jsonl
medbullets4: medbullets/medbullets_op4.csv
medbullets5: medbullets/medbullets_op5.csv
vqarad: vqarad
figstep: figstep  # the toy's own FigStep images (one word per vision patch), named by item id
"""


def write_benchmarks(b: Benchmarks, out: Path, *, figstep_renders: int = 4) -> Path:
    """Write every benchmark under `out`; returns the data.yaml path."""
    out.mkdir(parents=True, exist_ok=True)
    _jsonl(out / "catqa" / "catqa_english.json",
           [{"Category": i.category, "Subcategory": i.subcategory, "Question": i.prompt} for i in b.catqa])

    by_cat: dict[str, list[str]] = defaultdict(list)
    for i in b.hexphi:
        by_cat[i.category].append(i.prompt)
    for cat, prompts in by_cat.items():
        _csv(out / "hexphi" / f"category_{cat}.csv", None, [[p] for p in prompts])

    by_principle: dict[tuple[str, str], list[str]] = defaultdict(list)
    for n, i in enumerate(b.medsafety):  # split between the two generators of the release, as it is
        by_principle["gpt4" if n % 2 == 0 else "llama2", i.category].append(i.prompt)
    for (gen, cat), prompts in by_principle.items():
        _csv(out / "medsafetybench" / "datasets" / "test" / gen / f"med_safety_demonstrations_category_{cat}.csv",
             ["harmful_medical_request", "safe_response"], [[p, ""] for p in prompts])

    _csv(out / "xstest" / "xstest_prompts.csv", ["id", "prompt", "type", "label", "focus", "note"],
         [[n + 1, i.prompt, i.category, "safe", "", ""] for n, i in enumerate(b.benign)])

    pubmed = {i.pmid: {"QUESTION": i.question, "CONTEXTS": [i.context], "LABELS": ["RESULTS"],
                       "MESHES": [], "YEAR": "2026", "reasoning_required_pred": i.decision,
                       "reasoning_free_pred": i.decision, "final_decision": i.decision, "LONG_ANSWER": i.context}
              for i in b.pubmedqa}
    _write(out / "pubmedqa" / "ori_pqal.json", json.dumps(pubmed, indent=1))

    _jsonl(out / "medqa" / "phrases_no_exclude_test.jsonl",
           [{"question": i.question, "answer": i.options[i.answer],
             "options": dict(zip("ABCD", i.options, strict=True)), "meta_info": "step1",
             "answer_idx": "ABCD"[i.answer], "metamap_phrases": []} for i in b.medqa])
    for name, items, n in (("medbullets_op4", b.medbullets4, 4), ("medbullets_op5", b.medbullets5, 5)):
        letters = "abcde"[:n]
        rows = [[i.question, *i.options, "ABCDE"[i.answer], i.options[i.answer], ""] for i in items]
        _csv(out / "medbullets" / f"{name}.csv", ["question", *[f"op{c}" for c in letters], "answer_idx", "answer",
                                                   "explanation"], rows)
    _vqarad_parquet(b, out / "vqarad" / "data" / "test-00000-of-00001.parquet")
    (out / "data.yaml").write_text(DATA_YAML, encoding="utf-8")
    _figstep(out, figstep_renders)
    return out / "data.yaml"


def _vqarad_parquet(b: Benchmarks, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"image": {"bytes": i.scan.png(), "path": f"toy_scan_{n}.png"}, "question": i.question,
             "answer": i.answer} for n, i in enumerate(b.vqarad)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _figstep(out: Path, real_per_set: int) -> None:
    """The toy FigStep image of every safety and benign item, named by the id the loaders give it, and a few real
    renders (the exact images `graft eval` feeds a real model) for comparison."""
    from graft.evals import figstep
    from graft.evals.benchmarks import BENCHMARKS
    from graft.evals.config import DataConfig

    from .typeset import figstep_image

    config = DataConfig.from_yaml(out / "data.yaml")
    (out / "figstep").mkdir(parents=True, exist_ok=True)
    (out / "figstep-real").mkdir(parents=True, exist_ok=True)
    for name in ("catqa", "hexphi", "medsafetybench", "benign"):
        items = BENCHMARKS[name].load(config.source(name))
        for item in items:
            figstep_image(item.prompt).render().save(out / "figstep" / f"{item.id}.png")
        for item in items[:real_per_set]:
            figstep.render(item.prompt).save(out / "figstep-real" / f"{item.id}.png")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _jsonl(path: Path, rows: list[dict]) -> None:
    _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _csv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
