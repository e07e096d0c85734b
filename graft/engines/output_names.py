"""The names a merged folder will hold, each with the one thing that puts it there, checked before any work.

A merged folder holds what graft writes itself (the model card README.md, graft_recipe.yaml, its `.graft-output`
marker and the staging lock), the weight shards and their index (the target's names when mirrored, graft's own when
re-sharded) and every non-weight file of the target (config, tokenizer, processor...). Two of these under one name
would have one overwrite the other: a shard the index calls `README.md` replaced by the card (exit 0, and the output
does not load), a shard called `.graft-output` failing the write (an output error for what is an input problem). So
every name is claimed once, compared case-insensitively (the output may be copied to macOS or Windows), and a second
claim is refused as an input error naming the input file that makes it, before a byte is read or written.

Two target files are carried under another name, as a documented rule rather than a collision: README.md becomes
README.original.md (the card takes README.md). A target that graft itself made (it holds graft_recipe.yaml) brings
its own card and recipe, which describe that earlier graft: the new card and recipe replace them, and the new recipe
names the target, which keeps its own.
"""

from __future__ import annotations

from pathlib import Path

from graft.errors import InputError
from graft.io.guard import MARKER, OWNER, STAGING_RE

RECIPE_FILE = "graft_recipe.yaml"
CARD_FILE = "README.md"
ORIGINAL_CARD = "README.original.md"  # where the target's own README.md is carried
GRAFT_WRITES = {CARD_FILE: "the model card", RECIPE_FILE: "the recipe", MARKER: "graft's output marker",
                OWNER: "graft's staging lock"}


def carried_names(root: Path, side_files: list[Path], weight_files: dict[str, str]) -> dict[Path, Path]:
    """Each non-weight file of the target (relative path) → where the output holds it; refuses (InputError, exit 3)
    two things of the output under one name. `weight_files`: each output shard and index name → what puts it there,
    for the message (e.g. "shard 'x' named by /m/model.safetensors.index.json")."""
    claims: dict[str, tuple[bool, str]] = {}  # casefolded path → (is a folder, what claims it)

    def claim(name: str, what: str, *, folder: bool = False) -> None:
        key = name.casefold()
        held = claims.get(key)
        if held is not None and not (folder and held[0]):
            raise InputError(f"{what} would be written as {name!r}, where the output already holds {held[1]}; "
                             "rename it in a copy of the target (or, for a shard, re-shard with --shard-size)")
        if Path(name).name.startswith(".") and (STAGING_RE.match(Path(name).name) or name.endswith(".graft")):
            raise InputError(f"{what} is named {name!r}, a name graft keeps for its own bookkeeping; rename it in a "
                             "copy of the target (or, for a shard, re-shard with --shard-size)")
        claims[key] = (folder, what)

    for names in (GRAFT_WRITES, weight_files):
        for name, what in names.items():
            claim(name, what)
    made_by_graft = Path(RECIPE_FILE) in side_files
    carried: dict[Path, Path] = {}
    for rel in side_files:
        if made_by_graft and rel in (Path(RECIPE_FILE), Path(CARD_FILE)):
            continue  # an earlier graft's card and recipe: this graft's replace them
        dest = Path(ORIGINAL_CARD) if rel == Path(CARD_FILE) else rel
        what = f"{root / rel}" + (f" (carried as {ORIGINAL_CARD})" if dest != rel else "")
        for folder in reversed(dest.parents[:-1]):  # the folders it sits in are claimed as folders
            claim(folder.as_posix(), f"the folder of {what}", folder=True)
        claim(dest.as_posix(), what)
        carried[rel] = dest
    return carried


__all__ = ["CARD_FILE", "GRAFT_WRITES", "ORIGINAL_CARD", "RECIPE_FILE", "carried_names"]
