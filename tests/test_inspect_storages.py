"""Study storages graft did not make are never written. `graft inspect --storage` only reads a study, so it opens
the storage read-only (an SQLite file through `mode=ro`, Optuna's table creation off) after seeing Optuna's schema
in it: another application's database, a text file, a FIFO or a folder is refused (exit 3, one line naming it) and
every file beside it stays as it was, even where Optuna itself would have written (a storage missing its version
row). `graft search --storage` joins an Optuna storage (another study in it included: that is how Optuna shares
one database) and creates a new one, but refuses anything else before it makes its output folder (exit 5)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from graft.cli import app
from graft.errors import InputError, OutputError
from graft.io.databases import check_study_storage, optuna_tables
from graft.search import run_search
from tests.test_bad_input import assert_error
from tests.test_search import FIXTURE_DATA, LambdaScorer, num_layers, space_file

runner = CliRunner()
SPACE = ("graft_space: 1\nsampler: random\nscale: {low: 0.0, high: 1.5}\n"
         "groups: {attn: 1.0, mlp: 1.0, norm: 0.0, embed: 0.0, head: 0.0}\nbaselines: {uniform: [1.0]}\n")


@pytest.fixture(autouse=True)
def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def folder_state(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file in `folder` with its sha256 and mtime: anything written (a table, a journal) shows."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


def foreign_database(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users VALUES (1, 'ada')")
    db.commit()
    db.close()
    return path


def study_database(path: Path, name: str = "s", trials: int = 3) -> Path:
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{path}")
    study.optimize(lambda t: t.suggest_float("layer_0", 0, 1), n_trials=trials)
    return path


def made_by_another_app(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("PRAGMA application_id = 1234")
    db.commit()
    db.close()
    return path


# -- inspect: read only ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["url", "path"])
@pytest.mark.parametrize(("make", "words"), [
    (foreign_database, "holds table 'users', so it is not an Optuna study storage"),
    (made_by_another_app, "the data of another application (application_id 0x4d2)"),
    (lambda p: (p.write_text("id,name\n1,ada\n"), p)[1], "not an SQLite database"),
])
def test_inspect_refuses_a_storage_that_is_not_a_study_and_leaves_it_alone(tmp_path: Path, spelling: str, make,
                                                                            words: str) -> None:
    store = make(tmp_path / "their.db")
    before = folder_state(tmp_path)
    spec = f"sqlite:///{store}" if spelling == "url" else str(store)
    if spelling == "path" and "not an SQLite" in words:
        words = "neither an SQLite database nor an Optuna journal file"
    assert_error(runner.invoke(app, ["inspect", "--vector", str(tmp_path / "v"), "--storage", spec]), 3,
                 str(store), words)
    assert folder_state(tmp_path) == before


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_inspect_refuses_a_storage_that_is_not_a_file_unopened(tmp_path: Path, kind: str) -> None:
    store = tmp_path / "store.db"
    os.mkfifo(store) if kind == "fifo" else store.mkdir()  # SQLite or a journal reader would block on a FIFO
    for spec in (str(store), f"sqlite:///{store}"):
        assert_error(runner.invoke(app, ["inspect", "--vector", str(tmp_path / "v"), "--storage", spec]), 3,
                     str(store), "a FIFO" if kind == "fifo" else "a folder")


def test_inspect_reads_a_study_without_writing_a_byte(tmp_path: Path) -> None:
    from graft.inspect import study_coefficients, study_importance
    from graft.inspect.study import open_study

    store = study_database(tmp_path / "s.db", trials=6)
    before = folder_state(tmp_path)
    for spec in (f"sqlite:///{store}", str(store)):
        study = open_study(spec)
        assert [t.number for t in study.trials] == list(range(6))
        assert study.best_trial.number == optuna.load_study(study_name="s", storage=f"sqlite:///{store}"
                                                            ).best_trial.number
        with pytest.raises(InputError, match="no 'coefficients' user attribute"):
            study_coefficients(spec, "s")
        assert list(study_importance(spec, "s")["param"]) == ["layer_0"]
    assert folder_state(tmp_path) == before  # no table, no row, no journal or WAL file, not even an mtime


def test_inspect_never_lets_optuna_write_even_where_it_would(tmp_path: Path) -> None:
    """A storage without its version row: Optuna's own open inserts one; graft's read-only open cannot, so it is an
    input error and the file is unchanged."""
    store = study_database(tmp_path / "s.db")
    db = sqlite3.connect(store)
    db.execute("DELETE FROM version_info")
    db.commit()
    db.close()
    before = folder_state(tmp_path)
    assert_error(runner.invoke(app, ["inspect", "--vector", str(tmp_path / "v"), "--storage", str(store)]), 3,
                 str(store))
    assert folder_state(tmp_path) == before


def test_inspect_refuses_a_file_that_is_not_a_journal(tmp_path: Path) -> None:
    journal = tmp_path / "search.journal"
    journal.write_bytes(b"\x00\x01binary, not one JSON record a line" * 100)
    assert_error(runner.invoke(app, ["inspect", "--vector", str(tmp_path / "v"), "--storage", str(journal)]), 3,
                 str(journal), "nor an Optuna journal file")


# -- search: joins an Optuna storage or creates one, never another application's -----------------------------------
def _search(world, tmp_path: Path, storage: str, **kwargs):
    evals = tmp_path / "eval.yaml"
    evals.write_text(yaml.safe_dump({"graft_search_eval": 1, "data": str(FIXTURE_DATA), "safety": ["catqa"],
                                     "medical": ["pubmedqa"]}))
    return run_search(space=space_file(tmp_path, SPACE), eval_config=evals, target=str(world.target),
                      vector=str(world.vector), out=tmp_path / "out", storage=storage, trials=1,
                      scorer=LambdaScorer(num_layers(world)), heartbeat=1, **kwargs)


@pytest.mark.parametrize(("make", "words"), [
    (foreign_database, "holds table 'users'"),
    (made_by_another_app, "another application (application_id 0x4d2)"),
    (lambda p: (p.write_text("notes\n"), p)[1], "not an SQLite database"),
    (lambda p: (os.mkfifo(p), p)[1], "a FIFO, not an Optuna study storage"),
])
def test_search_refuses_another_applications_database_before_any_output(make_world, tmp_path: Path, make,
                                                                         words: str) -> None:
    world = make_world("causal")
    data = tmp_path / "data"
    data.mkdir()
    store = make(data / "their.db")
    before = folder_state(data)
    evals = tmp_path / "eval.yaml"
    evals.write_text(yaml.safe_dump({"graft_search_eval": 1, "data": str(FIXTURE_DATA), "safety": ["catqa"],
                                     "medical": ["pubmedqa"]}))
    result = runner.invoke(app, ["search", "--space", str(space_file(tmp_path, SPACE)), "--eval", str(evals),
                                 "--trials", "3", "-t", str(world.target), "--vector", str(world.vector),
                                 "--storage", f"sqlite:///{store}", "--out", str(tmp_path / "out")])
    line = assert_error(result, 5, str(store), words)
    assert "--storage" in line
    assert folder_state(data) == before and not (tmp_path / "out").exists()


def test_search_joins_an_optuna_storage_that_holds_another_study(make_world, tmp_path: Path) -> None:
    world = make_world("causal")
    store = study_database(tmp_path / "shared.db", name="someone-elses", trials=2)
    result = _search(world, tmp_path, f"sqlite:///{store}")
    assert len(result.ran) == 3
    names = optuna.study.get_all_study_names(f"sqlite:///{store}")
    assert sorted(names) == ["graft-search", "someone-elses"]
    assert len(optuna.load_study(study_name="someone-elses", storage=f"sqlite:///{store}").trials) == 2


def test_a_storage_being_created_by_another_worker_is_joined(tmp_path: Path) -> None:
    """Workers started together race to create a fresh SQLite storage: a file that is still empty, or holds only
    some of Optuna's tables, is Optuna's in the making, not another application's."""
    empty = tmp_path / "empty.db"
    empty.touch()
    check_study_storage(f"sqlite:///{empty}", write=True)
    partial = tmp_path / "partial.db"
    db = sqlite3.connect(partial)
    db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY, study_name VARCHAR(512))")
    db.execute("CREATE TABLE version_info (version_info_id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    check_study_storage(f"sqlite:///{partial}", write=True)
    assert {"studies", "version_info", "trials"} <= optuna_tables()
    with pytest.raises(InputError, match="holds no Optuna study"):  # but there is nothing to read in it yet
        check_study_storage(f"sqlite:///{partial}", write=False)
    with pytest.raises(OutputError, match="holds table 'users'"):
        check_study_storage(f"sqlite:///{foreign_database(tmp_path / 'f.db')}", write=True)


def test_a_trials_coefficients_that_are_not_finite_are_an_input_error(tmp_path: Path) -> None:
    from graft.inspect import study_coefficients

    store = tmp_path / "s.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{store}")
    trial = study.ask()
    trial.set_user_attr("coefficients", {"scale": float("inf")})
    study.tell(trial, 1.0)
    with pytest.raises(InputError, match=r"trial 0: invalid 'coefficients' \(scale: must be a finite number"):
        study_coefficients(str(store), "s", trial=0)
