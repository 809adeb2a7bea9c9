"""
The pools in PostgreSQL, for several masters sharing one history.

The same L{pcci.master.store.base.PoolStore} as SQLite's, on psycopg 3: one
connection, used from the store's own thread (so calls keep their order
and the reactor never waits on the database).  A connection that breaks
(the server restarted, the network went) is dropped and made again at the
next call; until then calls fail, and the master's batched writer tries
again (see L{pcci.master.store.writer.BatchedWriter}).

C{--db} takes a libpq URI: C{postgresql://pcci@db.lab/pcci},
C{postgresql:///pcci?host=/run/postgresql}.  The schema is created on
first use, under an advisory lock so that masters starting together do not
race, and carries a version as SQLite's does.

Beside the pools, the tables masters share (see L{pcci.master.peers.peers}):
C{masters} (each one's lease), C{workers} (who holds which worker),
C{mail} (commands and reports between masters, woken by C{NOTIFY}) and
C{events} (the events of running pools, for masters that show them), and
C{tokens} (those made through the API, so every master knows them).
Each master holds a session advisory lock of its own on this connection
while it lives: another master tells a dead one by its lock gone and its
lease run out.
"""

from __future__ import annotations

import time
import zlib
from typing import Any, TypeVar

from pcci.master.store import schema
from pcci.master.store.base import StoreError
from pcci.master.store.database import Database, Work
from pcci.master.store.dialect import PostgresDialect
from pcci.master.store.pools import SharedPools
from pcci.master.store.shared import CHANNEL, LOCKS, OFFLINE, ONCE_LOCK, SCHEMA_LOCK, Shared
from pcci.master.store.tables import Store

T = TypeVar("T")

#: The version of the tables; a database of a newer one is refused.
SCHEMA_VERSION = schema.LATEST["postgres"]

#: Seconds to wait for a connection before the database counts as unreachable.
CONNECT_TIMEOUT = 5

#: libpq settings of every connection: a server gone silent (a power cut)
#: is noticed within seconds rather than TCP's hours.
CONNECTION_SETTINGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}

def master_lock(name: str) -> int:
    """The second key of the advisory lock a master named C{name} holds while it lives."""
    return zlib.crc32(name.encode()) & 0x7FFF_FFFF


def is_postgres_url(db: str) -> bool:
    """Whether C{--db} names a PostgreSQL database rather than an SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except Exception:
        return "the --db URL"
    host = parts.get("host", "localhost")
    return f"postgresql database {parts.get('dbname', '?')} on {host}"


class PostgresDatabase(Database):
    """
    A PostgreSQL database, for the master named C{master}, which holds a
    session advisory lock of its own on the connection while it lives.
    """

    def __init__(self, url: str, reactor: Any, master: str) -> None:
        super().__init__(reactor, "pcci-store-pg")
        self.url = url
        self.master = master
        self.lock = master_lock(master)
        self.dialect = PostgresDialect(CHANNEL, LOCKS, ONCE_LOCK)
        self._connection: Any = None
        self._opened = False

    def connect(self) -> None:
        connection = self._connection_now()
        _check_schema(connection, self.url)
        with connection.transaction():
            connection.execute(
                "INSERT INTO masters (id, lock, pid) VALUES (%s, %s, pg_backend_pid())"
                " ON CONFLICT (id) DO UPDATE SET lock = EXCLUDED.lock, pid = EXCLUDED.pid,"
                " seen = now()",
                (self.master, self.lock),
            )
            # The workers of this master's last run are gone with it.
            connection.execute(OFFLINE, (self.master,))
            connection.execute("SELECT pg_notify(%s, 'w')", (CHANNEL,))
        self._opened = True

    def _connection_now(self) -> Any:
        """
        The connection, made again if it broke, holding this master's lock.
        (Made again, it updates this master's row but does not make it
        again: a master judged dead meanwhile learns so from its lease.)
        """
        if self._connection is None or self._connection.closed:
            connection = _connect(self.url)
            try:
                self._hold_lock(connection)
                if self._opened:
                    with connection.transaction():
                        connection.execute(
                            "UPDATE masters SET pid = pg_backend_pid() WHERE id = %s",
                            (self.master,),
                        )
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _hold_lock(self, connection: Any) -> None:
        """
        Take this master's lock.  At start, a lock held means another master
        of this name lives; later, it is this master's own session from
        before the connection broke, which the server has not yet let go.
        """
        taken = "SELECT pg_try_advisory_lock(%s, %s)"
        if connection.execute(taken, (LOCKS, self.lock)).fetchone()[0]:
            connection.commit()
            return
        connection.rollback()
        if not self._opened:
            raise StoreError(_name_taken(self.master, self.url))
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND classid = %s AND objid = %s AND objsubid = 2 AND pid <> pg_backend_pid()",
            (LOCKS, self.lock),
        )
        for _ in range(50):  # the old session goes within moments
            if connection.execute(taken, (LOCKS, self.lock)).fetchone()[0]:
                connection.commit()
                return
            connection.rollback()
            time.sleep(0.1)
        raise StoreError(f"this master's lock on the {_safe(self.url)} stays taken")

    def transact(self, work: Work[T], *args: Any) -> T:
        """C{work(cursor, dialect, *args)} in one transaction; a broken connection goes."""
        import psycopg

        connection = self._connection_now()
        try:
            with connection.transaction(), connection.cursor() as cursor:
                return work(cursor, self.dialect, *args)
        except psycopg.OperationalError:
            connection.close()  # made again at the next call
            raise

    def disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()  # its lock goes with it
            self._connection = None


class PostgresStore(Store):
    """
    The store of several masters on one PostgreSQL database, for the master
    named C{master}: the pools it writes are its own (C{owner}), and
    L{shared} holds what the masters share besides (see L{pcci.master.peers.peers}).
    """

    def __init__(self, db: PostgresDatabase) -> None:
        super().__init__(db, SharedPools(db, db.master))
        self.url = db.url
        self.master = db.master
        self.shared = Shared(db, db.master)


def check_database(url: str, master: str | None = None) -> None:
    """
    Reach the database, and create or check its schema; with C{master},
    check no other master of that name uses it.

    @raise StoreError: unreachable, not a pcci database, one of a newer
        pcci, or a master of that name there; nothing is changed then.
    """
    connection = _connect(url)
    try:
        _check_schema(connection, url)
        if master is not None:
            lock = master_lock(master)
            if not connection.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCKS, lock)).fetchone()[0]:
                raise StoreError(_name_taken(master, url))
    finally:
        connection.close()


def _connect(url: str) -> Any:
    """A connection to the database; one that cannot be made is a L{StoreError}."""
    import psycopg

    try:
        return psycopg.connect(url, **CONNECTION_SETTINGS)
    except psycopg.Error as e:
        raise StoreError(f"cannot reach the {_safe(url)}: {_first_line(e)}") from None


def _check_schema(connection: Any, url: str) -> None:
    """Create the schema, or check the one there, under the schema lock."""
    import psycopg

    try:
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCKS, SCHEMA_LOCK))
            cursor.execute("SELECT to_regclass('meta'), to_regclass('pools')")
            meta, pools = cursor.fetchone()
            if meta is None and pools is not None:
                raise StoreError(f"the {_safe(url)} has a pools table that is not pcci's")
            if meta is not None:
                cursor.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                row = cursor.fetchone()
                if row is None:
                    raise StoreError(f"the {_safe(url)} has no pcci schema version")
                if int(row[0]) > SCHEMA_VERSION:
                    raise StoreError(
                        f"the {_safe(url)} was written by a newer pcci (schema {row[0]},"
                        f" this one knows {SCHEMA_VERSION}): upgrade pcci"
                    )
            schema.migrate(cursor, "postgres", None if meta is None else int(row[0]), _columns)
            cursor.execute(
                "INSERT INTO meta VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                (str(SCHEMA_VERSION),),
            )
    except psycopg.Error as e:
        raise StoreError(f"cannot use the {_safe(url)}: {_first_line(e)}") from None


def _name_taken(master: str, url: str) -> str:
    return f"another master named {master!r} uses the {_safe(url)}: give each master a --name of its own"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _columns(cursor: Any, table: str) -> set[str]:
    cursor.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = %s",
        (table,),
    )
    return {name for (name,) in cursor.fetchall()}
