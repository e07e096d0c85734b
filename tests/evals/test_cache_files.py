"""A verdict cache graft did not make is never written: `graft eval --cache` (and the resume file an evaluation
keeps beside its results) pointed at another application's SQLite database, a file of another kind, a folder or a
FIFO is refused before any model loads (exit 5, one line naming it), and the file stays byte for byte. A new path,
an empty file or a cache an earlier graft eval made is used; graft stamps the caches it creates with its SQLite
application_id."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.evals.config import FIXTURES
from graft.evals.screening import VerdictCache
from graft.io.databases import VERDICT_CACHE_ID
from tests.test_bad_input import assert_error
from tests.test_inspect_storages import foreign_database

runner = CliRunner()


def _args(model: Path, out: Path, *extra: object) -> list[str]:
    return ["eval", str(model), "--tasks", "catqa", "--data", str(FIXTURES / "data.yaml"), "--limit", "2",
            "--out", str(out), "--device", "cpu", "-q", *map(str, extra)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _other_application(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("PRAGMA application_id = 1234")
    db.execute("CREATE TABLE records (key TEXT PRIMARY KEY, record TEXT NOT NULL)")  # even with the same table
    db.commit()
    db.close()
    return path


def _optuna_study(path: Path) -> Path:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name="s", storage=f"sqlite:///{path}")
    return path


FOREIGN = {
    "another application's tables": (foreign_database, "holds table 'users'"),
    "another application's id": (_other_application, "another application (application_id 0x4d2)"),
    "an Optuna study": (_optuna_study, "holds table"),
    "a text file": (lambda p: (p.write_text("name,score\nada,1\n"), p)[1], "not an SQLite database"),
}


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals come before any model loads: loading one fails the test."""
    from graft.evals import generation

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("the model was loaded before the cache was checked")

    monkeypatch.setattr(generation.HFBackend, "load", refuse)


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_a_foreign_cache_is_refused_and_left_as_it_was(case: str, tmp_path: Path, no_model_load: None) -> None:
    make, words = FOREIGN[case]
    cache = make(tmp_path / "their.db")
    before, listing = _sha(cache), sorted(os.listdir(tmp_path))
    out = tmp_path / "results.json"
    line = assert_error(runner.invoke(app, _args(Path("model"), out, "--cache", cache)), 5, str(cache), words)
    assert "graft will not write into it" in line
    assert _sha(cache) == before and sorted(os.listdir(tmp_path)) == listing  # no journal, no results


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_cache_that_is_not_a_file_is_refused_unopened(kind: str, tmp_path: Path, no_model_load: None) -> None:
    cache = tmp_path / "cache"
    cache.mkdir() if kind == "folder" else os.mkfifo(cache)  # a FIFO would block SQLite forever
    name = "a folder" if kind == "folder" else "a FIFO"
    assert_error(runner.invoke(app, _args(Path("model"), tmp_path / "r.json", "--cache", cache)), 5, str(cache),
                 name)


def test_a_foreign_file_where_the_resume_cache_goes_is_refused(tmp_path: Path, no_model_load: None) -> None:
    out = tmp_path / "results.json"
    resume = foreign_database(tmp_path / "results.partial.sqlite")
    before = _sha(resume)
    assert_error(runner.invoke(app, _args(Path("model"), out)), 5, str(resume), "holds table 'users'")
    assert _sha(resume) == before and not out.exists()


def test_graft_stamps_its_caches_and_reuses_them(tiny_llama: Path, tmp_path: Path) -> None:
    cache = tmp_path / "verdicts.sqlite"
    first = runner.invoke(app, _args(tiny_llama, tmp_path / "a.json", "--cache", cache))
    assert first.exit_code == 0, first.output
    db = sqlite3.connect(cache)
    assert db.execute("PRAGMA application_id").fetchone()[0] == VERDICT_CACHE_ID
    assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 2  # --limit 2 items
    db.close()
    again = runner.invoke(app, _args(tiny_llama, tmp_path / "b.json", "--cache", cache))
    assert again.exit_code == 0, again.output
    import json

    assert json.loads((tmp_path / "b.json").read_text())["timing"]["catqa"]["cached"] == 2


def test_an_empty_file_and_a_cache_of_an_older_graft_are_used(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"  # what mktemp makes: nothing in it to lose
    empty.touch()
    VerdictCache(empty).close()
    assert sqlite3.connect(empty).execute("PRAGMA application_id").fetchone()[0] == VERDICT_CACHE_ID
    older = tmp_path / "older.sqlite"  # the same table, no application id: written by a graft before the stamp
    db = sqlite3.connect(older)
    db.execute("CREATE TABLE records (key TEXT PRIMARY KEY, record TEXT NOT NULL)")
    db.execute("INSERT INTO records VALUES ('k', '{\"verdict\": 1}')")
    db.commit()
    db.close()
    cache = VerdictCache(older)
    assert cache.get_many(["k"]) == {"k": {"verdict": 1}}
    cache.close()


def test_a_damaged_record_is_scored_again(tmp_path: Path) -> None:
    cache = VerdictCache(tmp_path / "v.sqlite")
    cache.put_many({"good": {"verdict": 1}})
    with cache._db:
        cache._db.executemany("INSERT INTO records VALUES (?, ?)", [("bad", "{not json"), ("list", "[1]"),
                                                                    ("null", "null")])
    assert cache.get_many(["good", "bad", "list", "null", "absent"]) == {"good": {"verdict": 1}}
    cache.close()
