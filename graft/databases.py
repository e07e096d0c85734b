"""Databases graft is handed: an evaluation's verdict cache (`graft eval --cache`, a search's `verdicts.sqlite`), a
search's Optuna storage (`graft search --storage`, read back by `graft inspect --storage`) and MLflow's tracking
store (`--log mlflow`, `MLFLOW_TRACKING_URI`).

A database is a file (or a server) that someone else may own, and opening it with SQLite, SQLAlchemy or Optuna
writes into it: Optuna creates its tables in whatever database it is given, the verdict cache its own. So graft
looks before anything opens it for writing:

- a verdict cache is written only when it is graft's (the SQLite `application_id` graft stamps on one it creates,
  or exactly the cache's one table), or holds nothing at all (a new, empty file);
- a study storage is joined (resumed, shared by workers) only when every table in it is one Optuna makes, or it
  holds none yet (a new SQLite file, a server database just created);
- a storage that is only read (`graft inspect`) is opened read-only (SQLite's `mode=ro`; Optuna told not to create
  tables) after its schema was seen to be Optuna's;
- an SQLite tracking store is handed to MLflow only when it is new, empty or MLflow's.

Anything else is refused before it is touched, in one line naming it and saying what to do: exit 5 where graft
would have written (the database is not graft's to change), exit 3 where it only reads (not a study storage).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from graft.display import printable
from graft.errors import GraftError, InputError, OutputError

SQLITE_MAGIC = b"SQLite format 3\x00"
# PRAGMA application_id of a verdict cache graft creates: "grft" as a big-endian 32-bit integer, as SQLite's own
# docs suggest for an application file format (file(1) and graft tell the file apart by it).
VERDICT_CACHE_ID = int.from_bytes(b"grft", "big")
VERDICT_CACHE_TABLE = "records"
# Optuna's schema: the tables of its RDB models, plus alembic's bookkeeping (which Optuna stamps on creation).
ALEMBIC_TABLE = "alembic_version"
STUDY_TABLES_NEEDED = frozenset({"studies", "trials", "version_info"})  # what any Optuna study storage holds
JOURNAL_PROBE_BYTES = 1 << 20  # how much of a journal file's first line is read to recognise it
BUSY_TIMEOUT_S = 30.0  # a database another process is writing (a search's workers) is read once it is free
SERVER_SCHEMES = ("postgresql", "postgres:", "mysql")  # the database servers Optuna's RDB storage runs on


def optuna_tables() -> frozenset[str]:
    """The tables Optuna creates in a storage, from Optuna's own models (so an Optuna upgrade that adds one needs
    no change here)."""
    from optuna.storages._rdb import models

    return frozenset(models.BaseModel.metadata.tables) | {ALEMBIC_TABLE}


@dataclass(frozen=True)
class Schema:
    """What an SQLite file holds: its `application_id` and its objects (type, name, table), internal ones left out."""

    application_id: int
    objects: tuple[tuple[str, str, str], ...]

    @property
    def tables(self) -> set[str]:
        return {name for kind, name, _ in self.objects if kind == "table"}

    def foreign(self, allowed: Iterable[str]) -> str | None:
        """The first object that is not, or does not belong to, one of the `allowed` tables ('table users')."""
        allowed = set(allowed)
        for kind, name, table in self.objects:
            if (name if kind == "table" else table) not in allowed or kind in ("view", "trigger"):
                return f"{kind} {printable(repr(name))}"
        return None


# -- reading an SQLite file's schema without writing it -------------------------------------------------------------
def sqlite_file(url: str) -> Path | None:
    """The file an `sqlite://` URL names (None: an in-memory database, or not an SQLite URL)."""
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(url).database
    except ArgumentError:
        return None
    if not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # a SQLite URI (`?uri=true`): the path before its own query
        from urllib.parse import unquote, urlsplit

        database = unquote(urlsplit(database).path)
    return Path(database).expanduser()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


@dataclass(frozen=True)
class Use:
    """What graft wants a database for, as its messages say it: what it must be, the error when it is not (exit 5
    where graft would write, 3 where it only reads), and what the user can do."""

    what: str
    error: type[GraftError]
    fix: str

    def refuse(self, where: object, why: str) -> GraftError:
        return self.error(f"{where}: {why}; {self.fix}")


CACHE = Use("a graft verdict cache", OutputError,
            "graft will not write into it: choose another cache file (graft creates it)")
JOINED = Use("an Optuna study storage", OutputError,
             "graft will not add a study to it: give a new file or an Optuna storage as --storage")
READ = Use("an Optuna study storage", InputError,
           "give --storage the storage of a `graft search` or another Optuna study")
TRACKING = Use("an MLflow tracking store", InputError,
               "point MLFLOW_TRACKING_URI at an MLflow store, a server or a new file")
MLFLOW_TABLES_NEEDED = frozenset({"experiments", "runs"})  # in every MLflow store, whatever its version


def _regular_size(path: Path, use: Use) -> int:
    """The size of the regular file at `path` (links followed); never opened when it is a FIFO, a socket, a device
    or a folder (SQLite would block on a FIFO, or write its journal beside a folder)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise use.refuse(path, f"cannot read it ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise use.refuse(path, f"{_kind(info.st_mode)}, not {use.what}")
    return info.st_size


def _head(path: Path, n: int, use: Use) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise use.refuse(path, f"cannot read it ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # swapped for a FIFO since the check
            raise use.refuse(path, f"not a regular file, not {use.what}")
        return handle.read(n)


def _is_sqlite(path: Path, use: Use) -> bool:
    return _head(path, len(SQLITE_MAGIC), use) == SQLITE_MAGIC


def read_only_connection(path: Path) -> sqlite3.Connection:
    """An SQLite connection that cannot write `path` (SQLite's `mode=ro`): not its tables, not its journal."""
    return sqlite3.connect(f"file:{quote(str(Path(path).absolute()))}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                           check_same_thread=False)


def sqlite_schema(path: Path, use: Use) -> Schema | None:
    """The schema of the SQLite database at `path`, read without writing it; None for an empty file (a database
    nobody has written yet). Refused for `use` when it is not a regular file or not an SQLite database."""
    if _regular_size(path, use) == 0:
        return None
    if not _is_sqlite(path, use):
        raise use.refuse(path, f"not an SQLite database, so not {use.what}")
    try:
        db = read_only_connection(path)
        try:
            app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
            rows = db.execute("SELECT type, name, tbl_name FROM sqlite_master ORDER BY rowid").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise use.refuse(path, f"cannot read this SQLite database ({exc}), so not {use.what}") from exc
    internal = ("sqlite_autoindex_", "sqlite_sequence", "sqlite_stat")
    objects = tuple((str(kind), str(name), str(table)) for kind, name, table in rows
                    if not str(name).startswith(internal))
    return Schema(app_id, objects)


def _foreign_owner(app_id: int) -> str | None:
    return f"the data of another application (application_id {app_id:#x})" if app_id else None


# -- the verdict cache ----------------------------------------------------------------------------------------------
def check_verdict_cache(path: Path) -> bool:
    """Whether `path` may be used as graft's verdict cache: True when it exists and is one, False when it is absent
    or empty (graft creates it); an OutputError naming it otherwise (another application's database or file)."""
    if not os.path.lexists(path):
        return False
    schema = sqlite_schema(path, CACHE)
    if schema is None:
        return False
    foreign = (_foreign_owner(schema.application_id) if schema.application_id != VERDICT_CACHE_ID else None) \
        or schema.foreign({VERDICT_CACHE_TABLE})
    if foreign is not None:
        raise CACHE.refuse(path, f"holds {foreign}, so it is not {CACHE.what}")
    return bool(schema.objects)


# -- Optuna study storages ------------------------------------------------------------------------------------------
def check_study_storage(url: str, *, write: bool) -> None:
    """Refuse a storage that is not an Optuna study storage before Optuna opens it (and creates its tables there).
    `write`: the storage will be written (a search creating, joining or resuming a study); else only read."""
    use = JOINED if write else READ
    path = sqlite_file(url)
    if path is not None:
        _check_sqlite_storage(path, use)
    elif url.startswith(SERVER_SCHEMES):  # another scheme is not a storage at all: the caller says so
        _check_server_storage(url, use)


def _check_sqlite_storage(path: Path, use: Use) -> None:
    if not os.path.lexists(path):
        if use is JOINED:
            return  # Optuna creates it
        raise use.refuse(path, "no such study database")
    schema = sqlite_schema(path, use)
    if schema is None:
        _judge(set(), None, path, use)
    else:
        _judge(schema.tables, _foreign_owner(schema.application_id) or schema.foreign(optuna_tables()), path, use)


def _check_server_storage(url: str, use: Use) -> None:
    """A PostgreSQL or MySQL storage: its table names, asked through SQLAlchemy (nothing created)."""
    import sqlalchemy

    from graft.errors import reason

    where = f"--storage {redact(url)}"
    try:
        engine = sqlalchemy.create_engine(storage_url(url))
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except ImportError as exc:
        raise InputError(f"{where}: no database driver for it ({exc}); install one, e.g. pip install "
                         "'graft[postgres]'") from exc
    except Exception as exc:  # sqlalchemy: unreachable server, bad credentials, unknown database...
        raise InputError(f"{where}: cannot open it ({reason(exc)})") from exc
    foreign = sorted(tables - optuna_tables())
    _judge(tables, f"table {printable(foreign[0])!r}" if foreign else None, where, use)


def _judge(tables: set[str], foreign: str | None, where: object, use: Use) -> None:
    """Anything not Optuna's is refused; a storage that is only read must hold Optuna's study tables. (One that
    will be written may hold some or none yet: workers started together race to create a fresh one.)"""
    if foreign is not None:
        raise use.refuse(where, f"holds {foreign}, so it is not {use.what}")
    if use is READ and not tables >= STUDY_TABLES_NEEDED:
        raise use.refuse(where, "holds no Optuna study")


# -- an MLflow tracking store --------------------------------------------------------------------------------------
def check_tracking_store(uri: str) -> None:
    """`--log mlflow` with an SQLite tracking URI (MLflow's default is ./mlflow.db): MLflow creates and migrates its
    tables in whatever database it is given, so the file must be new, empty or already an MLflow store (its tables
    are MLflow's to migrate; their list changes with MLflow's version, so the store is recognised by the two every
    version has)."""
    path = sqlite_file(uri)
    if path is None or not os.path.lexists(path):
        return
    schema = sqlite_schema(path, TRACKING)
    if schema is None or not schema.objects:
        return
    foreign = _foreign_owner(schema.application_id)
    if foreign is None and not schema.tables >= MLFLOW_TABLES_NEEDED:
        foreign = schema.foreign(MLFLOW_TABLES_NEEDED)
    if foreign is not None:
        raise TRACKING.refuse(path, f"holds {foreign}, so it is not {TRACKING.what}")


def storage_url(url: str) -> str:
    """`postgresql://` means psycopg2 to older SQLAlchemy versions; use psycopg 3 when that is what is installed."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def redact(url: str) -> str:
    """The URL without its password, for reports and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: say nothing about it beyond its scheme
        return url.split("://", 1)[0] + "://…"


def read_only_storage(storage: str) -> Any:
    """What `graft inspect --storage` reads, opened so that reading it can never write it: an RDB URL (an SQLite
    file through a `mode=ro` connection; no table created in any database), or a file path read as an SQLite
    database or else as an Optuna journal file. Another application's database, a file of another kind or a
    missing one is refused first, in one line (InputError)."""
    import optuna

    if "://" in storage:
        path = sqlite_file(storage)
        if storage.startswith("sqlite:") and path is None:
            raise READ.refuse(f"--storage {storage}", "an in-memory database holds no study")
        check_study_storage(storage, write=False)
        where: object = redact(storage)
        journal = False
    else:
        path = Path(storage).expanduser()
        if not os.path.lexists(path):
            raise READ.refuse(path, "no such study storage file")
        _regular_size(path, READ)
        journal = not _is_sqlite(path, READ)
        check_journal(path) if journal else _check_sqlite_storage(path, READ)
        where = path
    try:
        if journal:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if path is None:  # a server: its tables were checked; Optuna must not create any
            return optuna.storages.RDBStorage(storage_url(storage), skip_table_creation=True)
        resolved = path.resolve()
        return optuna.storages.RDBStorage("sqlite://", skip_table_creation=True,
                                          engine_kwargs={"creator": lambda: read_only_connection(resolved)})
    except Exception as exc:  # Optuna's and SQLAlchemy's: a schema of another version, a write the file refused...
        from graft.errors import reason

        raise READ.refuse(where, f"cannot be read as {READ.what} ({reason(exc)}; `optuna storage upgrade` updates "
                                 "an older one)") from exc


def check_journal(path: Path) -> None:
    """An Optuna journal file: empty, or a first line that is one of Optuna's operations (a JSON object with an
    `op_code`); anything else is refused before Optuna reads it line by line."""
    if _regular_size(path, READ) == 0:
        return
    first = _head(path, JOURNAL_PROBE_BYTES, READ).split(b"\n", 1)[0]
    try:
        record = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise READ.refuse(path, "neither an SQLite database nor an Optuna journal file (its first line is not an "
                                "Optuna journal record)")


__all__ = ["VERDICT_CACHE_ID", "check_journal", "check_study_storage", "check_tracking_store", "check_verdict_cache",
           "optuna_tables", "read_only_connection", "read_only_storage", "redact", "sqlite_file", "sqlite_schema",
           "storage_url"]
