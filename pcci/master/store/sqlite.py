"""
The store in SQLite, for one master: the standard library's C{sqlite3} in
WAL mode, one connection used from the store's own thread (see
L{pcci.master.store.database}), so every call runs in the order it was made.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, TypeVar

from pcci.master.store import schema
from pcci.master.store.base import StoreError
from pcci.master.store.database import Database, Work
from pcci.master.store.dialect import Dialect

T = TypeVar("T")

#: The version of the tables; a database of a newer one is refused.
SCHEMA_VERSION = schema.LATEST["sqlite"]


class SQLiteDatabase(Database):
    """An SQLite database file (see L{open_database})."""

    dialect = Dialect()

    def __init__(self, path: str, reactor: Any) -> None:
        super().__init__(reactor, "pcci-store")
        self.path = path
        self._db: sqlite3.Connection | None = None

    def connect(self) -> None:
        self._db = open_database(self.path)

    def disconnect(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def transact(self, work: Work[T], *args: Any) -> T:
        assert self._db is not None, "the store is not open"
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")  # what it reads stays so until it commits
            return work(self._db.cursor(), self.dialect, *args)


def open_database(path: str) -> sqlite3.Connection:
    """
    Open (or create) the database at C{path} and check its schema.

    @raise StoreError: a file that is not a pcci database, one of a newer
        pcci, or one that cannot be written; nothing is changed then.
    """
    if path != ":memory:":
        parent = Path(path).parent
        if not parent.is_dir():
            raise StoreError(f"cannot open the database {path}: {parent} is not a directory")
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the database {path}: {e}") from None
    try:
        version = _schema_version(db)
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"the database {path} was written by a newer pcci (schema {version},"
                f" this one knows {SCHEMA_VERSION}): upgrade pcci, or start with"
                " another --db"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")  # fails at once on a read-only file
        schema.migrate(db.cursor(), "sqlite", version, _columns)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except StoreError:
        db.close()
        raise
    except sqlite3.Error as e:
        db.close()
        raise StoreError(f"cannot use the database {path}: {e}") from None
    db.isolation_level = "DEFERRED"
    return db


def _schema_version(db: sqlite3.Connection) -> int | None:
    """The database's schema version; None for a new, empty one."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None
    if "meta" not in tables:
        raise StoreError(f"{_file(db)} is not a pcci database (it has other tables)")
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        raise StoreError(f"{_file(db)} has no pcci schema version")
    return int(row[0])


def _file(db: sqlite3.Connection) -> str:
    row = db.execute("PRAGMA database_list").fetchone()
    return row[2] or ":memory:"


def _columns(cursor: Any, table: str) -> set[str]:
    return {row[1] for row in cursor.execute(f"PRAGMA table_info({table})")}
