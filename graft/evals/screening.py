"""Stratified subsets for screening (`--limit N` / `--fraction F` with a seed) and the verdict cache.

A subset keeps each category's share of the benchmark (largest-remainder allocation, at least one item per
category when the budget allows) and draws items inside a category with a generator seeded by
(seed, benchmark, category), so adding a category or a benchmark never changes another one's draw. `rest=True`
gives every item that subset leaves out: a search scores the subset, the report scores the rest, and no item is in
both.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from graft.errors import OutputError, UsageError
from graft.flag_ranges import EVAL, check

from .loaders import Item


@dataclass(frozen=True)
class Split:
    """A seeded, category-stratified split of every benchmark into a *search* part (what a search may score and
    choose on) and a *held-out* part (only ever reported). `part` says which one an evaluation reads. The held-out
    share is rounded per benchmark; each part keeps every category it can. The draw depends only on (seed,
    benchmark, category), as `stratified_subset`'s does, so every worker and every resume gets the same split."""

    holdout: float
    seed: int
    part: Literal["search", "heldout"] = "search"

    def __post_init__(self) -> None:
        if not 0 < self.holdout < 1:
            raise UsageError(f"holdout {self.holdout}: expected a share in (0, 1), or no split at all")
        if self.part not in ("search", "heldout"):
            raise UsageError(f"split part {self.part!r}: expected search or heldout")

    def apply(self, items: Sequence[Item]) -> list[Item]:
        if not items:
            return []
        # The search part is a stratified subset; the held-out part is everything it leaves out.
        search = stratified_subset(items, fraction=1.0 - self.holdout, seed=f"holdout-{self.seed}")
        if self.part == "search":
            return search
        chosen = {id(it) for it in search}
        rest = [it for it in items if id(it) not in chosen]
        if not rest:
            raise UsageError(f"{items[0].benchmark}: {len(items)} item(s) are too few to hold any out at holdout "
                             f"{self.holdout:g}; raise holdout, add items, or set holdout: 0")
        return rest

    def describe(self) -> dict:
        return {"holdout": self.holdout, "seed": self.seed, "part": self.part}


def stratified_subset(items: Sequence[Item], limit: int | None = None, fraction: float | None = None,
                      seed: int | str = 0, *, rest: bool = False) -> list[Item]:
    if limit is not None and fraction is not None:
        raise UsageError("give --limit or --fraction, not both")
    if limit is None and fraction is None:
        if rest:
            raise UsageError("--rest scores the items a --limit/--fraction subset leaves out: give one of them")
        return list(items)
    check(EVAL, limit=limit, fraction=fraction)
    total = min(len(items), limit) if limit is not None else max(1, round(fraction * len(items)))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[it.category].append(i)
    cats = sorted(groups)
    # Largest remainder, with a floor of one per category when there is room for all of them.
    quotas = {c: total * len(groups[c]) / len(items) for c in cats}
    take = {c: math.floor(q) for c, q in quotas.items()}
    if total >= len(cats):
        for c in cats:
            take[c] = max(take[c], 1)
    left = total - sum(take.values())
    for c in sorted(cats, key=lambda c: (-(quotas[c] - math.floor(quotas[c])), c)):
        if left <= 0:
            break
        if take[c] < len(groups[c]):
            take[c] += 1
            left -= 1
    while sum(take.values()) > total:  # the floor overshot: trim the largest allocations
        c = max(cats, key=lambda c: (take[c], c))
        take[c] -= 1
    chosen: list[int] = []
    for c in cats:
        rng = random.Random(f"{seed}:{items[0].benchmark}:{c}")
        chosen += rng.sample(groups[c], take[c])
    if not rest:
        return [items[i] for i in sorted(chosen)]
    left = sorted(set(range(len(items))) - set(chosen))
    if not left:
        raise UsageError(f"--rest: the subset takes all {len(items)} items of {items[0].benchmark}; lower "
                         "--limit/--fraction")
    return [items[i] for i in left]


class VerdictCache:
    """SQLite map from (model content hash, task, item, settings) to a finished per-sample record. graft writes one
    only if it made it (stamped with graft's SQLite `application_id`) or it is a new, empty file: never another
    application's database (graft.databases)."""

    def __init__(self, path: str | Path):
        from graft.databases import VERDICT_CACHE_ID, check_verdict_cache

        self.path = Path(path)
        exists = check_verdict_cache(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            if not exists:
                self._db.execute(f"PRAGMA application_id = {VERDICT_CACHE_ID}")
            self._db.execute("CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, record TEXT NOT NULL)")
            self._db.commit()
        except (OSError, sqlite3.Error) as e:
            raise OutputError(f"{self.path}: cannot open the verdict cache ({e}); pass another --cache") from e
        self._lock = threading.Lock()

    @staticmethod
    def key(model_hash: str, task: str, item: Item, settings: dict) -> str:
        blob = json.dumps([model_hash, task, item.id, item.prompt, item.answer, settings], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        """The records stored under `keys`; a record that is not a JSON object (a damaged or hand-edited cache) is
        missing, so the item is scored again and its record replaced."""
        out = {}
        with self._lock:
            for k in keys:
                row = self._db.execute("SELECT record FROM records WHERE key = ?", (k,)).fetchone()
                try:
                    record = json.loads(row[0]) if row else None
                except (TypeError, ValueError):
                    record = None
                if isinstance(record, dict):
                    out[k] = record
        return out

    def put_many(self, entries: dict[str, dict]) -> None:
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in entries.items()])

    def close(self) -> None:
        self._db.close()
