"""Benchmark loaders for the published file layouts (and the same rows from the hub).

Each loader turns rows into `Item`s and rejects a malformed row with one line naming the file, the row and the
expected field. Field names and layouts follow the public releases:

- catqa: `catqa_english.json`, JSON lines with `Category`, `Subcategory`, `Question`.
- hexphi: folder of `category_N.csv`, no header, one instruction a row (the public release lacks category 2).
- medsafetybench: repo root with `datasets/test/{gpt4,llama2}/med_safety_demonstrations_category_N.csv`,
  column `harmful_medical_request`.
- benign: XSTest `xstest_prompts.csv` (`prompt`, `type`, `label`; label `safe` rows), or CSV/JSONL with `prompt`.
- pubmedqa: `ori_pqal.json` (`{PMID: {QUESTION, CONTEXTS, final_decision}}`), or `pqa_labeled` rows with
  `question`, `context.contexts`, `final_decision`.
- medqa: MedQA-USMLE 4-option JSONL (`question`, `options` {A..D}, `answer_idx`), or GBaker's `sent1`,
  `ending0..3`, `label`.
- medbullets4/5: `medbullets_op4.csv` / `medbullets_op5.csv` (`question`, `opa`..`ope`, `answer_idx`).
- vqarad: flaviagiammarino/vqa-rad parquet (`image` {bytes, path}, `question`, `answer`), or the OSF release
  JSON (`image_name`, `question`, `answer`, `answer_type`) beside its `VQA_RAD Image Folder`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from graft.errors import InputError
from graft.schema import load_json_text

from .sources import HubSource, Source

# HEx-PHI category names (Qi et al. 2023, README of LLM-Tuning-Safety/HEx-PHI); category 2 is withheld.
HEXPHI_CATEGORIES = {
    1: "Illegal Activity", 2: "Child Abuse Content", 3: "Hate/Harass/Violence", 4: "Malware",
    5: "Physical Harm", 6: "Economic Harm", 7: "Fraud/Deception", 8: "Adult Content",
    9: "Political Campaigning", 10: "Privacy Violation Activity", 11: "Tailored Financial Advice",
}
# MedSafetyBench categories are the nine AMA Principles of Medical Ethics (Han et al. 2024).
MEDSAFETY_CATEGORIES = {n: f"AMA principle {n}" for n in range(1, 10)}


@dataclass(frozen=True)
class Item:
    """One benchmark item. `answer` is a letter for multiple choice, yes/no/maybe for PubMedQA, text for VQA."""

    benchmark: str
    id: str
    category: str
    prompt: str
    choices: tuple[str, ...] = ()
    answer: str = ""
    context: str = ""
    answer_type: str = ""  # vqa: closed / open
    image: bytes | str | None = field(default=None, repr=False)

    def load_image(self) -> Image.Image | None:
        if self.image is None:
            return None
        src = io.BytesIO(self.image) if isinstance(self.image, bytes) else self.image
        try:
            with Image.open(src) as im:
                return im.convert("RGB")
        except OSError as e:
            raise InputError(f"{self.benchmark} item {self.id}: cannot read image ({e})") from e


Row = dict[str, Any]
Rows = Iterator[tuple[str, Row]]  # (location "file:row", row)


# ---------------------------------------------------------------- readers (I/O at the edge)

def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: not found (expected {what})")
    return path


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> InputError:
    return InputError(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8")


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from e
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from e


def _json(path: Path) -> Any:
    try:
        return load_json_text(_text(path))
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e


def _read_jsonl(path: Path) -> Rows:
    try:
        with path.open(encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = load_json_text(line)
                except ValueError as e:
                    raise InputError(f"{path}:{n}: not valid JSON ({e}); expected one JSON object a line") from e
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{n}", row
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from e


def _read_csv(path: Path, header: bool = True) -> Rows:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if header:
                for n, row in enumerate(csv.DictReader(f), 2):
                    yield f"{path}:{n}", row
            else:
                for n, cells in enumerate(csv.reader(f), 1):
                    if cells:
                        yield f"{path}:{n}", {"instruction": cells[0]}
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from e
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV file ({e})") from e


def _read_parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InputError(f"{path}: not a readable parquet file ({e})") from e
    for n, row in enumerate(table.to_pylist()):
        yield f"{path}:{n}", row


def _read_hub(src: HubSource) -> Rows:
    import datasets

    try:
        ds = datasets.load_dataset(src.hub, src.name, split=src.split, revision=src.revision)
    except Exception as e:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"hub dataset '{src.hub}' (config {src.name}, split {src.split}) could not be loaded: {first}; "
            "download it and point data.yaml at the local copy, or go online"
        ) from e
    for n, row in enumerate(ds):
        yield f"{src.hub}[{src.split}]:{n}", dict(row)


def _field(loc: str, row: Row, name: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(row, dict):
        raise InputError(f"{loc}: expected an object with field '{name}', got {type(row).__name__}")
    value = row.get(name)
    if name in row and (value is None or (isinstance(value, str) and not value.strip())):
        raise InputError(f"{loc}: field '{name}' is empty")
    if value is None:
        raise InputError(f"{loc}: missing field '{name}' (found fields: {', '.join(map(str, row)) or 'none'})")
    if not isinstance(value, kind):
        want = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise InputError(f"{loc}: field '{name}' should be {want}, got {type(value).__name__}")
    return value


def _rows(src: Source, local: Callable[[Path], Rows]) -> Rows:
    if isinstance(src, HubSource):
        return _read_hub(src)
    return local(Path(src))


# ---------------------------------------------------------------- safety benchmarks

def load_catqa(src: Source) -> list[Item]:
    def local(p: Path) -> Rows:
        return _read_jsonl(_need(p, "catqa_english.json, JSON lines with Category/Subcategory/Question"))

    items = []
    for i, (loc, row) in enumerate(_rows(src, local)):
        q = _field(loc, row, "Question")
        items.append(Item("catqa", f"catqa-{i}", _field(loc, row, "Category"), q))
    return _nonempty(items, src)


def load_hexphi(src: Source) -> list[Item]:
    if isinstance(src, HubSource):
        rows = _read_hub(src)
        items = [Item("hexphi", f"hexphi-{i}", str(_field(loc, row, "category", object)),
                      _field(loc, row, "instruction")) for i, (loc, row) in enumerate(rows)]
        return _nonempty(items, src)
    folder = _need(Path(src), "HEx-PHI folder with category_N.csv files")
    files = sorted(folder.glob("category_*.csv"), key=lambda p: _category_number(p))
    if not files:
        raise InputError(f"{folder}: no category_N.csv files (HEx-PHI layout: one instruction a row, no header)")
    items = []
    for path in files:
        n = _category_number(path)
        for j, (loc, row) in enumerate(_read_csv(path, header=False)):
            text = _field(loc, row, "instruction")
            items.append(Item("hexphi", f"hexphi-{n}-{j}", HEXPHI_CATEGORIES.get(n, f"category {n}"), text))
    return _nonempty(items, src)


def _category_number(path: Path) -> int:
    m = re.search(r"category_(\d+)\.csv$", path.name)
    if not m:
        raise InputError(f"{path}: file name should end in category_N.csv")
    return int(m.group(1))


def load_medsafetybench(src: Source) -> list[Item]:
    if isinstance(src, HubSource):
        rows = _read_hub(src)
        items = [Item("medsafetybench", f"medsafetybench-{i}", str(row.get("category", "all")),
                      _field(loc, row, "harmful_medical_request")) for i, (loc, row) in enumerate(rows)]
        return _nonempty(items, src)
    root = _need(Path(src), "MedSafetyBench folder with datasets/test/{gpt4,llama2}/...csv")
    test = root / "datasets" / "test" if (root / "datasets" / "test").is_dir() else root
    files = sorted(test.glob("*/med_safety_demonstrations_category_*.csv"))
    if not files:
        raise InputError(
            f"{root}: no datasets/test/{{gpt4,llama2}}/med_safety_demonstrations_category_N.csv files"
        )
    items = []
    for path in files:
        n = int(re.search(r"category_(\d+)\.csv$", path.name).group(1))
        gen = path.parent.name
        for j, (loc, row) in enumerate(_read_csv(path)):
            text = _field(loc, row, "harmful_medical_request")
            items.append(Item("medsafetybench", f"medsafetybench-{gen}-{n}-{j}",
                              MEDSAFETY_CATEGORIES.get(n, f"category {n}"), text))
    return _nonempty(items, src)


def load_benign(src: Source) -> list[Item]:
    def local(p: Path) -> Rows:
        _need(p, "XSTest xstest_prompts.csv or a JSONL/CSV with a 'prompt' field")
        return _read_jsonl(p) if p.suffix == ".jsonl" else _read_csv(p)

    items = []
    for i, (loc, row) in enumerate(_rows(src, local)):
        if str(row.get("label", "safe")).strip().lower() != "safe":
            continue  # XSTest's contrast prompts are unsafe; over-refusal is measured on the safe ones
        items.append(Item("benign", f"benign-{row.get('id', i)}", str(row.get("type") or "benign"),
                          _field(loc, row, "prompt")))
    return _nonempty(items, src)


# ---------------------------------------------------------------- medical benchmarks

def load_pubmedqa(src: Source) -> list[Item]:
    def local(p: Path) -> Rows:
        _need(p, "PubMedQA ori_pqal.json ({PMID: {QUESTION, CONTEXTS, final_decision}}) or JSONL/parquet rows")
        if p.suffix == ".jsonl":
            return _read_jsonl(p)
        if p.suffix == ".parquet":
            return _read_parquet(p)
        data = _json(p)
        if not isinstance(data, dict):
            raise InputError(f"{p}: expected a JSON object keyed by PMID (ori_pqal.json layout)")
        return ((f"{p}:PMID {k}", {"pubid": k, **v} if isinstance(v, dict) else {"pubid": k}) for k, v in data.items())

    items = []
    for i, (loc, row) in enumerate(_rows(src, local)):
        if "QUESTION" in row or "CONTEXTS" in row:  # original release
            question, contexts = _field(loc, row, "QUESTION"), _field(loc, row, "CONTEXTS", list)
        else:  # hub pqa_labeled / bigbio source
            question = _field(loc, row, "question")
            ctx = _field(loc, row, "context", (dict, list))
            contexts = ctx.get("contexts") if isinstance(ctx, dict) else ctx
            if not isinstance(contexts, list):
                raise InputError(f"{loc}: field 'context.contexts' should be a list of strings")
        decision = _field(loc, row, "final_decision").strip().lower()
        if decision not in ("yes", "no", "maybe"):
            raise InputError(f"{loc}: field 'final_decision' should be yes/no/maybe, got '{decision}'")
        items.append(Item("pubmedqa", f"pubmedqa-{row.get('pubid', i)}", decision, question,
                          choices=("yes", "no", "maybe"), answer=decision, context="\n".join(contexts)))
    return _nonempty(items, src)


def load_medqa(src: Source) -> list[Item]:
    def local(p: Path) -> Rows:
        _need(p, "MedQA-USMLE 4_options JSONL (question, options A-D, answer_idx)")
        return _read_parquet(p) if p.suffix == ".parquet" else _read_jsonl(p)

    items = []
    for i, (loc, row) in enumerate(_rows(src, local)):
        if "sent1" in row:  # GBaker/MedQA-USMLE-4-options-hf
            question = _field(loc, row, "sent1")
            choices = tuple(_field(loc, row, f"ending{j}") for j in range(4))
            label = _field(loc, row, "label", int)
            answer = "ABCD"[label]
        else:
            question = _field(loc, row, "question")
            options = _field(loc, row, "options", dict)
            if sorted(options) != list("ABCD"):
                raise InputError(f"{loc}: field 'options' should have keys A, B, C, D, got {sorted(options)}")
            choices = tuple(str(options[k]) for k in "ABCD")
            answer = _letter(loc, row, "answer_idx", "ABCD")
        items.append(Item("medqa", f"medqa-{i}", str(row.get("meta_info") or "all"), question,
                          choices=choices, answer=answer))
    return _nonempty(items, src)


def _letter(loc: str, row: Row, name: str, letters: str) -> str:
    value = str(_field(loc, row, name, object)).strip().upper()
    if value not in letters:
        raise InputError(f"{loc}: field '{name}' should be one of {', '.join(letters)}, got '{value}'")
    return value


def _load_medbullets(src: Source, n: int) -> list[Item]:
    name = f"medbullets{n}"

    def local(p: Path) -> Rows:
        _need(p, f"medbullets_op{n}.csv with question, opa..op{'abcde'[n - 1]}, answer_idx")
        return _read_csv(p)

    letters = "ABCDE"[:n]
    items = []
    for i, (loc, row) in enumerate(_rows(src, local)):
        question = _field(loc, row, "question")
        choices = tuple(_field(loc, row, f"op{c}") for c in "abcde"[:n])
        items.append(Item(name, f"{name}-{i}", "all", question, choices=choices,
                          answer=_letter(loc, row, "answer_idx", letters)))
    return _nonempty(items, src)


def load_medbullets4(src: Source) -> list[Item]:
    return _load_medbullets(src, 4)


def load_medbullets5(src: Source) -> list[Item]:
    return _load_medbullets(src, 5)


def load_vqarad(src: Source) -> list[Item]:
    if isinstance(src, HubSource):
        rows = _read_hub(src)
    else:
        p = _need(Path(src), "VQA-RAD parquet file/folder (image, question, answer) or the OSF JSON")
        if p.is_dir():
            files = sorted(p.glob("**/test-*.parquet")) or sorted(p.glob("**/*.parquet"))
            if not files:
                jsons = sorted(p.glob("*.json"))
                if not jsons:
                    raise InputError(f"{p}: no parquet files and no VQA-RAD JSON (image, question, answer)")
                files = jsons[:1]
        else:
            files = [p]
        rows = (r for f in files for r in (_read_osf_vqarad(f) if f.suffix == ".json" else _read_parquet(f)))
    items = []
    for i, (loc, row) in enumerate(rows):
        question = _field(loc, row, "question")
        answer = str(_field(loc, row, "answer", object)).strip()
        image = row.get("image")
        if isinstance(image, dict):
            image = image.get("bytes") or image.get("path")
        elif hasattr(image, "save"):  # a PIL image from `datasets`
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            image = buf.getvalue()
        if not image:
            raise InputError(f"{loc}: missing field 'image' (bytes or path)")
        kind = str(row.get("answer_type") or "").strip().lower()
        if kind not in ("closed", "open"):
            kind = "closed" if answer.lower() in ("yes", "no") else "open"
        items.append(Item("vqarad", f"vqarad-{i}", kind, question, answer=answer, answer_type=kind, image=image))
    return _nonempty(items, src)


def _read_osf_vqarad(path: Path) -> Rows:
    data = _json(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of items (the OSF VQA-RAD release), got {type(data).__name__}")
    images = path.parent / "VQA_RAD Image Folder"
    for n, row in enumerate(data):
        loc = f"{path}:item {n}"
        name = _field(loc, row, "image_name")
        yield loc, {**row, "image": str(images / name)}


def _nonempty(items: list[Item], src: Source) -> list[Item]:
    if not items:
        raise InputError(f"{src}: no items found")
    return items


# The reading helpers under public names, for benchmarks declared outside this module (docs/extending.md): `rows`
# reads a local file with the reader given or the hub source, `field` checks one field of a row, `nonempty`
# refuses a source with no items; each error is one line naming the file, the row and the field.
rows, field_of, nonempty = _rows, _field, _nonempty
read_jsonl, read_csv, read_parquet, need = _read_jsonl, _read_csv, _read_parquet, _need
