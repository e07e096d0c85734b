"""`graft eval --update-card`: a merged folder's model card takes the scores of an evaluation of that very folder, in
place, instead of a second merge with `--results`.

Only graft's own blocks change: the `model-index` of the YAML header (the other metadata are kept as they are) and the
`## Evaluation` section (replaced, or put before `## Recipe`). The card ends up byte-identical to the one `graft merge
--results` writes with the same results; whatever a user wrote elsewhere in it is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from graft.engines.model_card import CardResults, evaluation_section, model_index
from graft.errors import IncompatibleError, InputError, OutputError
from graft.io.checkpoint import weights_sha256
from graft.io.ownership import MARKER, folder_kind, is_graft_folder, read_marker, rewrite_in_output

CARD = "README.md"
EVALUATION = "## Evaluation\n"
RECIPE = "## Recipe\n"


@dataclass(frozen=True)
class CardUpdate:
    card: Path
    tasks: int
    recorded: bool  # the new card is recorded as graft's (it had no edits of the user's)


def check_card_folder(model: str | Path) -> Path:
    """The card `graft eval --update-card` will rewrite, checked before any evaluation: a finished merge output of
    graft's holding a README.md it can replace (exit 5 otherwise, naming the folder and what to do)."""
    folder = Path(os.path.abspath(Path(model).expanduser()))
    flag = "--update-card"
    if not folder.is_dir():
        raise OutputError(f"{flag}: {model} is not a local folder; only a model folder that graft merged has a card "
                          "graft may update (evaluate it, then `graft merge --results results.json` for a new one)")
    if not is_graft_folder(folder):
        raise OutputError(f"{flag}: {folder} is not a graft output (no {MARKER} file in it); graft updates only the "
                          "card of a folder it merged: add the scores yourself, or merge again with `graft merge "
                          "--results results.json`")
    kind = folder_kind(folder)
    if kind != "merge":
        raise OutputError(f"{flag}: {folder} is a graft {kind} output, not a merged model; only a merged model's "
                          "card carries scores")
    if not isinstance(read_marker(folder).get("contents"), dict):
        raise OutputError(f"{flag}: {folder} was left unfinished or made by an older graft (its {MARKER} records "
                          "no contents); merge it again (`graft merge --recipe graft_recipe.yaml`)")
    card = folder / CARD
    if card.is_symlink() or not card.is_file():
        raise OutputError(f"{flag}: {card} is missing or not a regular file; merge the folder again to get its card "
                          "back (`graft merge --recipe graft_recipe.yaml --force`)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{flag}: {folder}: cannot write into this folder (permission denied); nothing was "
                          "evaluated")
    card_text(card)  # a header that does not parse is said now, not after the evaluation
    return card


def card_text(card: Path) -> tuple[dict, str]:
    """The card's YAML header (as a mapping) and its body."""
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{card}: cannot read it as UTF-8 text ({exc}); merge the folder again to rebuild it") from exc
    if not text.startswith("---\n") or "\n---\n" not in text[3:]:
        return {}, text
    header, body = text[4:].split("\n---\n", 1)
    try:
        meta = yaml.safe_load(header) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{card}: its YAML header does not parse ({str(exc).splitlines()[0]}); fix it, or merge "
                         "the folder again to rebuild the card") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{card}: its YAML header is not a mapping; fix it, or merge the folder again")
    return meta, body


def with_scores(meta: dict, body: str, results: CardResults, fallback_title: str) -> str:
    """The card with `results` as its model-index and its Evaluation section, the rest as it was."""
    title = _title(meta, body) or fallback_title
    meta = {**meta, "model-index": model_index(title, results.scores)}
    section = "\n".join(evaluation_section(results.scores)) + "\n\n"
    start = _heading(body, EVALUATION)
    if start is not None:
        end = _heading(body, "## ", after=start + len(EVALUATION))
        body = body[:start] + section + (body[end:] if end is not None else "")
    else:
        at = _heading(body, RECIPE)
        body = body[:at] + section + body[at:] if at is not None else body.rstrip("\n") + "\n\n" + section
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip()
    return f"---\n{header}\n---\n{body}"


def add_scores_to_card(card: Path, results: CardResults) -> CardUpdate:
    """Put `results` into the card of the merged folder holding `card` (`check_card_folder`), once the content hash
    of the folder's weights, read now, is the one the results record (exit 4 otherwise, the card untouched)."""
    folder = card.parent
    held = weights_sha256(folder)
    if held != results.weights_sha256:
        raise IncompatibleError(
            f"--update-card: {results.path} scores weights with sha256 {results.weights_sha256}, but {folder} now "
            f"holds weights with sha256 {held} (changed during the evaluation?); the card was left as it was: "
            f"evaluate the folder again")
    meta, body = card_text(card)
    text = with_scores(meta, body, results, folder.name)
    recorded = rewrite_in_output(folder, CARD, text.encode("utf-8"))
    return CardUpdate(card, len(results.scores), recorded)


def _heading(body: str, heading: str, after: int = 0) -> int | None:
    """Where a line starting with `heading` begins in `body`, from `after` on."""
    if after == 0 and body.startswith(heading):
        return 0
    at = body.find("\n" + heading, max(after - 1, 0))
    return at + 1 if at >= 0 else None


def _title(meta: dict, body: str) -> str | None:
    """The model's name: the model-index's, else the card's first `# ` heading."""
    index = meta.get("model-index")
    if isinstance(index, list) and index and isinstance(index[0], dict) and isinstance(index[0].get("name"), str):
        return index[0]["name"]
    for line in body.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return None


__all__ = ["CardUpdate", "add_scores_to_card", "check_card_folder", "with_scores"]
