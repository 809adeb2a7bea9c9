"""
What differs between SQLite's SQL and PostgreSQL's, in one object: every
table module (L{pcci.master.store.pools}, C{tokens}, C{schedules},
C{deliveries}, C{identities}) writes its statements once, with C{?}
marks, and runs them through the engine's dialect.
"""

from __future__ import annotations

from typing import Any


class Dialect:
    """SQLite's: one master, so nothing to lock against or to tell."""

    name = "sqlite"
    #: What locks the rows a C{SELECT} reads until the transaction ends
    #: (SQLite's C{BEGIN IMMEDIATE} already locks the whole database).
    lock = ""
    #: The same, passing over rows another transaction holds.
    lock_free = ""

    def sql(self, statement: str) -> str:
        """A statement written with C{?} marks, in this engine's marks."""
        return statement

    def execute(self, cursor: Any, statement: str, args: Any = ()) -> Any:
        """Execute a statement written with C{?} marks; the cursor."""
        cursor.execute(self.sql(statement), args)
        return cursor

    def contains(self, column: str) -> str:
        """The test that a text column holds the text of a C{?} parameter."""
        return f"instr({column}, ?) > 0"

    def workers(self, names: list[str]) -> Any:
        """A pool's workers as its C{workers} column keeps them."""
        return " " + " ".join(names) + " "

    def has_worker(self, name: str) -> tuple[str, Any]:
        """The test that a pool has a job on a worker, and its parameter."""
        return self.contains("workers"), f" {name} "

    def notify(self, cursor: Any, payload: str) -> None:
        """Tell the other masters what changed, once the transaction commits."""

    def once(self, cursor: Any) -> bool:
        """Whether this master may do work that one master at a time does."""
        return True


class PostgresDialect(Dialect):
    """PostgreSQL's: several masters, told by C{NOTIFY} and kept apart by locks."""

    name = "postgres"
    lock = " FOR UPDATE"
    lock_free = " FOR UPDATE SKIP LOCKED"

    def __init__(self, channel: str, locks: int, once_lock: int) -> None:
        self.channel = channel
        self._locks = locks
        self._once_lock = once_lock

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    def contains(self, column: str) -> str:
        return f"strpos({column}, ?) > 0"

    def workers(self, names: list[str]) -> Any:
        return list(names)

    def has_worker(self, name: str) -> tuple[str, Any]:
        return "workers @> ARRAY[?]::text[]", name

    def notify(self, cursor: Any, payload: str) -> None:
        cursor.execute("SELECT pg_notify(%s, %s)", (self.channel, payload))

    def once(self, cursor: Any) -> bool:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (self._locks, self._once_lock))
        return bool(cursor.fetchone()[0])


def notify_if_changed(cursor: Any, dialect: Dialect, payload: str) -> bool:
    """After a statement: whether it changed a row; if so, tell the other masters C{payload}."""
    if cursor.rowcount == 0:
        return False
    dialect.notify(cursor, payload)
    return True
