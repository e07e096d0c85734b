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

What is read is bounded before anything is tokenized (`check_items` applies the item bounds to every benchmark,
a plugin's too), each bound refused in one line naming the file, the row and the field, never truncated: a
benchmark item is the unit a score counts, and one cut short is another question. Any text field of an item
(request, question, abstract, option, answer) at most `MAX_FIELD_CHARS` characters, the length at which Python's
`csv` module already refuses a field: published items are at most a few thousand, so a longer one is a broken file
(typically a CSV quote left open, which swallows every row after it). At most `MAX_ROWS` rows a file and items a
benchmark; a JSONL line at most `MAX_LINE_CHARS`; a file read whole (JSON, parquet) at most `MAX_WHOLE_FILE_BYTES`;
an image at most `MAX_IMAGE_BYTES` and Pillow's decompression-bomb limit. An item id (which names its FigStep image
file) at most `MAX_ID_CHARS` characters and no path separator or control character; a category at most
`MAX_CATEGORY_CHARS`. Only regular files are opened (a FIFO would block forever).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from graft.display import printable
from graft.errors import InputError
from graft.regular_files import check_regular, open_regular
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

# Bounds on what is read (module docstring). The largest published sets here have about 12,000 items (MedQA's
# training split; PubMedQA's artificial set 211,000); their longest field a few thousand characters.
MAX_FIELD_CHARS = csv.field_size_limit()  # 131,072 by default: the length at which csv refuses a field
MAX_LINE_CHARS = 8 * MAX_FIELD_CHARS  # a JSONL row holds several fields
MAX_ROWS = 1_000_000
MAX_WHOLE_FILE_BYTES = 2**30  # a JSON or parquet file is parsed whole
MAX_IMAGE_BYTES = 64 * 2**20
MAX_ID_CHARS = 200  # `<id>.png` must fit a file name
MAX_CATEGORY_CHARS = 200


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
    where: str = field(default="", repr=False, compare=False)  # "file:row" it was read from, for messages

    def load_image(self) -> Image.Image | None:
        if self.image is None:
            return None
        return open_image(self.image, f"{self.where or self.benchmark} (item {self.id})")

    def texts(self) -> dict[str, str]:
        """The item's text fields by name, as `check_items` bounds them."""
        return {"prompt": self.prompt, "context": self.context, "answer": self.answer,
                **{f"choice {i + 1}": c for i, c in enumerate(self.choices)}}


def open_image(image: bytes | str | Path, where: str, what: str = "image") -> Image.Image:
    """An image from its bytes or its file, as RGB: a regular file of at most MAX_IMAGE_BYTES, within Pillow's
    decompression-bomb limit, or an InputError naming `where` (and the image as `what`)."""
    if not isinstance(image, bytes | str | Path):
        raise _bad(f"{where}: {what} should be bytes or a file path, got {type(image).__name__}")
    if not isinstance(image, bytes):
        path = Path(image)
        try:
            size = check_regular(path).st_size
        except InputError as e:
            raise _bad(f"{where}: {what} {e}") from e
        if size > MAX_IMAGE_BYTES:
            raise _bad(f"{where}: {what} {path} is {size} bytes, more than {MAX_IMAGE_BYTES}; a benchmark image is "
                       "far smaller: check the file")
        with os.fdopen(open_regular(path), "rb") as handle:
            image = handle.read()
    if len(image) > MAX_IMAGE_BYTES:
        raise _bad(f"{where}: {what} of {len(image)} bytes, more than {MAX_IMAGE_BYTES}; a benchmark image is far "
                   "smaller: check the file")
    try:
        with Image.open(io.BytesIO(image)) as im:
            return im.convert("RGB")
    except UnidentifiedImageError as e:
        raise _bad(f"{where}: cannot read this {what} (not an image format Pillow knows)") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise _bad(f"{where}: cannot read this {what} ({e})") from e


def _bad(message: str) -> InputError:
    """An input error whose text (paths, field names, values read from a file) is safe for a terminal."""
    return InputError(printable(message))


_ID_FORBIDDEN = re.compile(r"[/\\\x00-\x1f\x7f]")


def check_items(benchmark: str, items: list[Item]) -> list[Item]:
    """Every item within the bounds (module docstring), and no id given twice: an id names one item's outcome in the
    per-item records, the verdict cache and the held-out report, so a repeated one would count a row twice or hide
    one (a file listing an item twice is broken: refused, naming both rows)."""
    if len(items) > MAX_ROWS:
        raise _bad(f"{benchmark}: {len(items)} items, more than {MAX_ROWS}; evaluate a split of it")
    seen: dict[str, Item] = {}
    for it in items:
        if not isinstance(it.id, str) or not it.id or len(it.id) > MAX_ID_CHARS or _ID_FORBIDDEN.search(it.id) \
                or it.id in (".", ".."):
            raise _bad(f"{it.where or benchmark}: item id {str(it.id)[:MAX_ID_CHARS]!r} must be 1 to {MAX_ID_CHARS} "
                       "characters without '/', '\\' or control characters (it names the item's FigStep image file)")
        where = it.where or f"{benchmark} item {it.id}"
        if not isinstance(it.category, str) or len(it.category) > MAX_CATEGORY_CHARS:
            raise _bad(f"{where}: category of {len(str(it.category))} characters, more than {MAX_CATEGORY_CHARS}; "
                       "check the file")
        try:  # the common case in one pass; the field is named only when one is too long (or not text)
            longest = max(len(it.prompt), len(it.context), len(it.answer), *map(len, it.choices))
        except TypeError:
            longest = MAX_FIELD_CHARS + 1
        if longest > MAX_FIELD_CHARS:
            for name, text in it.texts().items():
                _check_length(where, name, text)
        first = seen.setdefault(it.id, it)
        if first is not it:
            raise _bad(f"{where}: item id {it.id!r} is already the id of {first.where or 'an earlier item'}; "
                       f"{benchmark} lists an item twice, or its ids collide: remove the repeated row or fix the ids")
    return items


def _check_length(where: str, name: str, text: object) -> None:
    if not isinstance(text, str):  # a plugin's loader handed over something else
        raise _bad(f"{where}: field '{name}' should be text, got {type(text).__name__}")
    if len(text) > MAX_FIELD_CHARS:
        raise _bad(f"{where}: field '{name}' is {len(text)} characters, more than {MAX_FIELD_CHARS} (published items "
                   "are a few thousand): likely a broken file, e.g. a CSV quote left open; fix the row")


Row = dict[str, Any]
Rows = Iterator[tuple[str, Row]]  # (location "file:row", row)


# ---------------------------------------------------------------- readers (I/O at the edge)

def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise _bad(f"{path}: not found (expected {what})")
    return path


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> InputError:
    return _bad(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8")


def _open_text(path: Path, whole: bool = False):
    """A benchmark file opened for reading as UTF-8 text: a regular file only (`whole`: one parsed at once, so at
    most MAX_WHOLE_FILE_BYTES)."""
    try:
        size = check_regular(path).st_size
    except InputError as e:
        raise _bad(str(e)) from e
    if whole and size > MAX_WHOLE_FILE_BYTES:
        raise _bad(f"{path}: {size} bytes, more than {MAX_WHOLE_FILE_BYTES} read at once; a benchmark file is far "
                   "smaller: check the path")
    return open(open_regular(path), encoding="utf-8-sig", newline="")


def _text(path: Path) -> str:
    try:
        with _open_text(path, whole=True) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from e
    except OSError as e:
        raise _bad(f"{path}: cannot read ({e.strerror})") from e


def _json(path: Path) -> Any:
    try:
        return load_json_text(_text(path))
    except ValueError as e:
        raise _bad(f"{path}: not valid JSON ({e})") from e


def _at_most(rows: Iterator[Any], where: object) -> Iterator[Any]:
    """`rows`, refused past MAX_ROWS (counted as read, so a huge file fails before it is all in memory)."""
    for n, row in enumerate(rows, 1):
        if n > MAX_ROWS:
            raise _bad(f"{where}: more than {MAX_ROWS} rows; evaluate a split of it")
        yield row


def _read_jsonl(path: Path) -> Rows:
    try:
        with _open_text(path) as f:
            n = 0
            while line := f.readline(MAX_LINE_CHARS + 1):
                n += 1
                if len(line) > MAX_LINE_CHARS:
                    raise _bad(f"{path}:{n}: a line of more than {MAX_LINE_CHARS} characters; expected one JSON "
                               "object a line (a benchmark row is far shorter)")
                if n > MAX_ROWS:
                    raise _bad(f"{path}: more than {MAX_ROWS} rows; evaluate a split of it")
                if not line.strip():
                    continue
                try:
                    row = load_json_text(line)
                except ValueError as e:
                    raise _bad(f"{path}:{n}: not valid JSON ({e}); expected one JSON object a line") from e
                if not isinstance(row, dict):
                    raise _bad(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
                yield f"{path}:{n}", row
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from e
    except OSError as e:
        raise _bad(f"{path}: cannot read ({e.strerror})") from e


def _read_csv(path: Path, header: bool = True) -> Rows:
    try:
        with _open_text(path) as f:
            if header:
                reader = csv.DictReader(f)
                for n, row in _at_most(enumerate(reader, 2), path):
                    yield f"{path}:{n}", row
            else:
                for n, cells in _at_most(enumerate(csv.reader(f), 1), path):
                    if cells:
                        yield f"{path}:{n}", {"instruction": cells[0]}
    except UnicodeDecodeError as e:
        raise _not_utf8(path, e) from e
    except csv.Error as e:
        if "field larger than field limit" in str(e):
            raise _bad(f"{path}: a field of more than {MAX_FIELD_CHARS} characters (published items are a few "
                       "thousand): likely a CSV quote left open; fix the file") from e
        raise _bad(f"{path}: not a readable CSV file ({e})") from e
    except OSError as e:
        raise _bad(f"{path}: cannot read ({e.strerror})") from e


def _read_parquet(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        size = check_regular(path).st_size
    except InputError as e:
        raise _bad(str(e)) from e
    if size > MAX_WHOLE_FILE_BYTES:
        raise _bad(f"{path}: {size} bytes, more than {MAX_WHOLE_FILE_BYTES} read at once; split it")
    try:
        with os.fdopen(open_regular(path), "rb") as handle:
            parquet = pq.ParquetFile(handle)
            if parquet.metadata.num_rows > MAX_ROWS:
                raise _bad(f"{path}: {parquet.metadata.num_rows} rows, more than {MAX_ROWS}; evaluate a split of it")
            table = parquet.read()
    except InputError:
        raise
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise _bad(f"{path}: not a readable parquet file ({e})") from e
    for n, row in enumerate(table.to_pylist()):
        yield f"{path}:{n}", row


def _read_hub(src: HubSource) -> Rows:
    import datasets

    try:
        ds = datasets.load_dataset(src.hub, src.name, split=src.split, revision=src.revision)
    except Exception as e:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        raise _hub_unavailable(src, e) from e
    if len(ds) > MAX_ROWS:
        raise _bad(f"hub dataset '{src.hub}' (split {src.split}): {len(ds)} rows, more than {MAX_ROWS}; evaluate a "
                   "split of it")
    for n, row in enumerate(ds):
        yield f"{src.hub}[{src.split}]:{n}", dict(row)


def hub_files(src: HubSource) -> Path:
    """The folder of a `layout: files` hub source: the repository's files as published, from the hub cache (fetched
    into it when online), to be read like a local copy."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(src.hub, repo_type="dataset", revision=src.revision))
    except Exception as e:  # huggingface_hub raises several types (offline, gated, not found, HTTP errors)
        raise _hub_unavailable(src, e) from e


def _hub_unavailable(src: HubSource, exc: BaseException) -> InputError:
    """One line naming the dataset, why it could not be read (offline and not cached, gated without a token, ...)
    and how to use a local copy instead."""
    text = " ".join(str(exc).split())
    chain = f"{text} {exc.__cause__ or ''}".lower()
    if "gated" in chain or "401" in chain or "403" in chain:
        why = (f"it is gated: accept its terms at https://huggingface.co/datasets/{src.hub} and set HF_TOKEN "
               "(or run `hf auth login`)")
    elif any(k in chain for k in ("offline", "couldn't reach", "connect", "not cached", "couldn't find cache",
                                  "cannot find the requested files in the local cache")):
        why = "offline, and it is not in the hub cache"
    else:
        why = (text[:300] or type(exc).__name__).rstrip(".")
    return _bad(f"hub dataset '{src.hub}' ({src.part()}) could not be loaded: {why}; download it and "
                "point data.yaml at the local copy (--data data.yaml), or go online")


def _field(loc: str, row: Row, name: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(row, dict):
        raise _bad(f"{loc}: expected an object with field '{name}', got {type(row).__name__}")
    value = row.get(name)
    if name in row and (value is None or (isinstance(value, str) and not value.strip())):
        raise _bad(f"{loc}: field '{name}' is empty")
    if value is None:
        found = ", ".join(str(k)[:40] for k in list(row)[:20]) or "none"
        raise _bad(f"{loc}: missing field '{name}' (found fields: {found})")
    if not isinstance(value, kind):
        want = " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        raise _bad(f"{loc}: field '{name}' should be {want}, got {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        _check_length(loc, name, value)
    return value


def _rows(src: Source, local: Callable[[Path], Rows]) -> Rows:
    if isinstance(src, HubSource):
        return local(hub_files(src)) if src.layout == "files" else _read_hub(src)
    return local(Path(src))


# ---------------------------------------------------------------- safety benchmarks

def load_catqa(src: Source) -> list[Item]:
    def local(p: Path) -> Rows:
        return _read_jsonl(_need(p, "catqa_english.json, JSON lines with Category/Subcategory/Question"))

    items = []
    for i, (loc, row) in enumerate(_rows(src, local)):
        q = _field(loc, row, "Question")
        items.append(Item("catqa", f"catqa-{i}", _field(loc, row, "Category"), q, where=loc))
    return _nonempty(items, src)


def load_hexphi(src: Source) -> list[Item]:
    if isinstance(src, HubSource) and src.layout == "files":
        src = hub_files(src)
    if isinstance(src, HubSource):
        rows = _read_hub(src)
        items = [Item("hexphi", f"hexphi-{i}", str(_field(loc, row, "category", object)),
                      _field(loc, row, "instruction"), where=loc) for i, (loc, row) in enumerate(rows)]
        return _nonempty(items, src)
    folder = _need(Path(src), "HEx-PHI folder with category_N.csv files")
    files = sorted(folder.glob("category_*.csv"), key=lambda p: _category_number(p))
    if not files:
        raise _bad(f"{folder}: no category_N.csv files (HEx-PHI layout: one instruction a row, no header)")
    items = []
    for path in files:
        n = _category_number(path)
        for j, (loc, row) in enumerate(_read_csv(path, header=False)):
            text = _field(loc, row, "instruction")
            items.append(Item("hexphi", f"hexphi-{n}-{j}", HEXPHI_CATEGORIES.get(n, f"category {n}"), text,
                              where=loc))
    return _nonempty(items, src)


def _category_number(path: Path) -> int:
    m = re.search(r"category_(\d+)\.csv$", path.name)
    if not m:
        raise _bad(f"{path}: file name should end in category_N.csv")
    return int(m.group(1))


def load_medsafetybench(src: Source) -> list[Item]:
    if isinstance(src, HubSource) and src.layout == "files":
        src = hub_files(src)
    if isinstance(src, HubSource):
        rows = _read_hub(src)
        items = [Item("medsafetybench", f"medsafetybench-{i}", str(row.get("category", "all")),
                      _field(loc, row, "harmful_medical_request"), where=loc) for i, (loc, row) in enumerate(rows)]
        return _nonempty(items, src)
    root = _need(Path(src), "MedSafetyBench folder with datasets/test/{gpt4,llama2}/...csv")
    test = root / "datasets" / "test" if (root / "datasets" / "test").is_dir() else root
    files = sorted(test.glob("*/med_safety_demonstrations_category_*.csv"))
    if not files:
        raise _bad(
            f"{root}: no datasets/test/{{gpt4,llama2}}/med_safety_demonstrations_category_N.csv files"
        )
    items = []
    for path in files:
        n = _category_number(path)
        gen = path.parent.name
        for j, (loc, row) in enumerate(_read_csv(path)):
            text = _field(loc, row, "harmful_medical_request")
            items.append(Item("medsafetybench", f"medsafetybench-{gen}-{n}-{j}",
                              MEDSAFETY_CATEGORIES.get(n, f"category {n}"), text, where=loc))
    return _nonempty(items, src)


def load_benign(src: Source) -> list[Item]:
    def local(p: Path) -> Rows:
        _need(p, "XSTest xstest_prompts.csv or a JSONL/CSV with a 'prompt' field")
        return _read_jsonl(p) if p.suffix == ".jsonl" else _read_csv(p)

    items = []
    for i, (loc, row) in enumerate(_rows(src, local)):
        if str(row.get("label", "safe")).strip().lower() != "safe":
            continue  # XSTest's contrast prompts are unsafe; over-refusal is measured on the safe ones
        given = str(row.get("id") if row.get("id") is not None else "").strip()  # XSTest's id; else the row
        items.append(Item("benign", f"benign-{given or i}", str(row.get("type") or "benign"),
                          _field(loc, row, "prompt"), where=loc))
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
            raise _bad(f"{p}: expected a JSON object keyed by PMID (ori_pqal.json layout)")
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
                raise _bad(f"{loc}: field 'context.contexts' should be a list of strings")
        decision = _field(loc, row, "final_decision").strip().lower()
        if decision not in ("yes", "no", "maybe"):
            raise _bad(f"{loc}: field 'final_decision' should be yes/no/maybe, got {decision[:40]!r}")
        if not all(isinstance(c, str) for c in contexts):
            raise _bad(f"{loc}: field 'CONTEXTS' (context.contexts) should be a list of strings")
        pubid = str(row.get("pubid") if row.get("pubid") is not None else "").strip()
        items.append(Item("pubmedqa", f"pubmedqa-{pubid or i}", decision, question,
                          choices=("yes", "no", "maybe"), answer=decision, context="\n".join(contexts), where=loc))
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
            if isinstance(label, bool) or not 0 <= label < len(choices):
                raise _bad(f"{loc}: field 'label' should be 0, 1, 2 or 3 (the right ending), got {label!r}")
            answer = "ABCD"[label]
        else:
            question = _field(loc, row, "question")
            options = _field(loc, row, "options", dict)
            if sorted(options) != list("ABCD"):
                keys = ", ".join(sorted(map(str, options))[:8])
                raise _bad(f"{loc}: field 'options' should have keys A, B, C, D, got {keys}")
            choices = tuple(str(options[k]) for k in "ABCD")
            answer = _letter(loc, row, "answer_idx", "ABCD")
        items.append(Item("medqa", f"medqa-{i}", str(row.get("meta_info") or "all"), question,
                          choices=choices, answer=answer, where=loc))
    return _nonempty(items, src)


def _letter(loc: str, row: Row, name: str, letters: str) -> str:
    value = str(_field(loc, row, name, object)).strip().upper()
    if value not in letters:
        raise _bad(f"{loc}: field '{name}' should be one of {', '.join(letters)}, got {value[:40]!r}")
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
                          answer=_letter(loc, row, "answer_idx", letters), where=loc))
    return _nonempty(items, src)


def load_medbullets4(src: Source) -> list[Item]:
    return _load_medbullets(src, 4)


def load_medbullets5(src: Source) -> list[Item]:
    return _load_medbullets(src, 5)


def load_vqarad(src: Source) -> list[Item]:
    if isinstance(src, HubSource) and src.layout == "files":
        src = hub_files(src)
    if isinstance(src, HubSource):
        rows = _read_hub(src)
    else:
        p = _need(Path(src), "VQA-RAD parquet file/folder (image, question, answer) or the OSF JSON")
        if p.is_dir():
            files = sorted(p.glob("**/test-*.parquet")) or sorted(p.glob("**/*.parquet"))
            if not files:
                jsons = sorted(p.glob("*.json"))
                if not jsons:
                    raise _bad(f"{p}: no parquet files and no VQA-RAD JSON (image, question, answer)")
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
            raise _bad(f"{loc}: missing field 'image' (bytes or path)")
        kind = str(row.get("answer_type") or "").strip().lower()
        if kind not in ("closed", "open"):
            kind = "closed" if answer.lower() in ("yes", "no") else "open"
        items.append(Item("vqarad", f"vqarad-{i}", kind, question, answer=answer, answer_type=kind, image=image,
                          where=loc))
    return _nonempty(items, src)


def _read_osf_vqarad(path: Path) -> Rows:
    data = _json(path)
    if not isinstance(data, list):
        raise _bad(f"{path}: expected a JSON list of items (the OSF VQA-RAD release), got {type(data).__name__}")
    images = path.parent / "VQA_RAD Image Folder"
    for n, row in enumerate(data):
        loc = f"{path}:item {n}"
        name = _field(loc, row, "image_name")
        yield loc, {**row, "image": str(images / name)}


def _nonempty(items: list[Item], src: Source) -> list[Item]:
    if not items:
        raise _bad(f"{src}: no items found")
    return items


# The reading helpers under public names, for benchmarks declared outside this module (docs/extending.md): `rows`
# reads a local file with the reader given or the hub source, `field` checks one field of a row, `nonempty`
# refuses a source with no items; each error is one line naming the file, the row and the field.
rows, field_of, nonempty = _rows, _field, _nonempty
read_jsonl, read_csv, read_parquet, need = _read_jsonl, _read_csv, _read_parquet, _need
