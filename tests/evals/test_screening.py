"""Stratified screening subsets and the verdict cache."""

from __future__ import annotations

from collections import Counter

import pytest

from graft.errors import UsageError
from graft.evals.loaders import Item
from graft.evals.screening import VerdictCache, stratified_subset


def _items(sizes: dict[str, int]) -> list[Item]:
    return [Item("bench", f"{c}-{i}", c, f"prompt {c} {i}") for c, n in sizes.items() for i in range(n)]


def test_fraction_keeps_category_shares():
    items = _items({"a": 50, "b": 30, "c": 20})
    sub = stratified_subset(items, fraction=0.1, seed=3)
    assert Counter(it.category for it in sub) == {"a": 5, "b": 3, "c": 2}


def test_limit_gives_every_category_one_and_exact_total():
    items = _items({"a": 90, "b": 5, "c": 5})
    sub = stratified_subset(items, limit=10, seed=0)
    counts = Counter(it.category for it in sub)
    assert sum(counts.values()) == 10 and min(counts.values()) >= 1
    assert stratified_subset(items, limit=1000) == items  # more than there is: everything, in order


def test_seeded_and_independent_per_category():
    items = _items({"a": 40, "b": 40})
    s1 = stratified_subset(items, limit=10, seed=1)
    assert s1 == stratified_subset(items, limit=10, seed=1)
    assert s1 != stratified_subset(items, limit=10, seed=2)
    # Adding a category does not change the draw inside another one.
    more = stratified_subset(_items({"a": 40, "b": 40, "z": 40}), fraction=0.25, seed=1)
    base = stratified_subset(items, fraction=0.25, seed=1)
    assert [i.id for i in more if i.category == "a"] == [i.id for i in base if i.category == "a"]


def test_rest_is_exactly_the_complement_of_the_subset():
    items = _items({"a": 50, "b": 30, "c": 20})
    for kwargs in ({"fraction": 0.3, "seed": 4}, {"limit": 7, "seed": 0}):
        sub = stratified_subset(items, **kwargs)
        rest = stratified_subset(items, rest=True, **kwargs)
        assert not {i.id for i in sub} & {i.id for i in rest}
        assert sorted(sub + rest, key=items.index) == items  # together: every item once, rest in file order
        assert rest == [i for i in items if i not in sub]
    with pytest.raises(UsageError, match="give one of them"):
        stratified_subset(items, rest=True)
    with pytest.raises(UsageError, match="takes all 100 items of bench"):
        stratified_subset(items, limit=100, rest=True)


def test_bad_arguments():
    items = _items({"a": 3})
    with pytest.raises(UsageError, match="not both"):
        stratified_subset(items, limit=1, fraction=0.5)
    with pytest.raises(UsageError, match=r"--fraction 1\.5"):
        stratified_subset(items, fraction=1.5)


def test_cache_roundtrip(tmp_path):
    cache = VerdictCache(tmp_path / "c.sqlite")
    it = _items({"a": 1})[0]
    k1 = VerdictCache.key("hashA", "catqa", it, {"cap": 64})
    assert k1 != VerdictCache.key("hashB", "catqa", it, {"cap": 64})
    assert k1 != VerdictCache.key("hashA", "catqa", it, {"cap": 32})
    cache.put_many({k1: {"response": "x", "verdict": {"harmful": True}}})
    assert cache.get_many([k1, "missing"]) == {k1: {"response": "x", "verdict": {"harmful": True}}}
    cache.close()


def test_holdout_split_is_disjoint_complete_stratified_and_seeded():
    from graft.evals.screening import Split

    items = _items({"a": 21, "b": 10, "c": 1})
    search, held = Split(0.5, 4, "search").apply(items), Split(0.5, 4, "heldout").apply(items)
    assert not {i.id for i in search} & {i.id for i in held}
    assert sorted(i.id for i in search + held) == sorted(i.id for i in items)
    # Each category split in its own share (largest remainder); a one-item category stays in the search part.
    assert Counter(i.category for i in held) == {"a": 10, "b": 5} or Counter(i.category for i in held) == {
        "a": 11, "b": 5}
    assert search == Split(0.5, 4, "search").apply(items) and search != Split(0.5, 5, "search").apply(items)
    # Limits then apply within a part: a subset of the search part never reaches a held-out item.
    assert {i.id for i in stratified_subset(search, limit=6, seed=0)} <= {i.id for i in search}
    with pytest.raises(UsageError, match="too few to hold any out"):
        Split(0.5, 0, "heldout").apply(_items({"a": 1}))
    with pytest.raises(UsageError, match="holdout"):
        Split(1.0, 0, "search")
