"""
Where the master keeps pools on disk, so a restart forgets nothing.

L{PoolStore} is the seam: what the master's state needs of storage, as
Deferreds, never blocking the reactor.  Each engine runs in a thread of its
own (L{ThreadedStore}), so every call runs in the order it was made (a read
sees every write asked before it): L{SQLiteStore} here, the standard
library's C{sqlite3} in WAL mode, for one master; and
L{pcci.master.pgstore.PostgresStore}, for several masters sharing one
history.

A pool is stored as its summary, for listing, and its whole record (jobs,
their states and kept output, event ids), written again as it changes.
The state batches its writes: one transaction carries every pool changed
within a short interval.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from pcci.master.schedules import RUNS_KEPT, SKIPPED, Schedule

log = Logger()

T = TypeVar("T")

#: The version of the tables below; a database of a newer one is refused.
#: 2: pools' C{submitted_by} and C{schedule} columns; the C{tokens},
#: C{schedules} and C{deliveries} tables.
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    state TEXT NOT NULL,
    cmd TEXT NOT NULL,
    workers TEXT NOT NULL,
    summary TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pools_ended ON pools (ended_at);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    last_run REAL NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    runs TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_at);
"""

#: Whose pool a delivery tells of (NULL: the master's own hook), added
#: without a new schema version: a master that does not know it leaves it NULL.
DELIVERY_OWNER = "ALTER TABLE deliveries ADD COLUMN owner TEXT"

#: From schema 1 to 2: who submitted each pool and the schedule that
#: started it, as columns; by column, those missing.
NEW_COLUMNS = {
    "submitted_by": """
        ALTER TABLE pools ADD COLUMN submitted_by TEXT;
        UPDATE pools SET submitted_by = json_extract(summary, '$.submitted_by');
        CREATE INDEX IF NOT EXISTS pools_submitted_by ON pools (submitted_by, id);
    """,
    "schedule": """
        ALTER TABLE pools ADD COLUMN schedule TEXT;
        CREATE INDEX IF NOT EXISTS pools_schedule ON pools (schedule, id);
    """,
}


class StoreError(Exception):
    """The store cannot be used: its message says why and what to do."""


@dataclass(frozen=True)
class StoredPool:
    """A pool as written: its fields for queries, its summary and its record."""

    id: str
    started_at: float
    ended_at: float | None
    state: str
    cmd: str
    workers: list[str]
    summary: dict[str, Any]
    record: dict[str, Any]
    submitted_by: str | None = None
    schedule: str | None = None


@dataclass(frozen=True)
class PoolQuery:
    """Which pools C{GET /pools} asks for; None matches any."""

    #: Older than this pool id (ids sort by time).
    before: str | None = None
    #: C{running}, C{ok} or C{failed}.
    state: str | None = None
    #: With a job on this worker.
    worker: str | None = None
    #: Whose command holds this text.
    cmd: str | None = None
    #: Started with the token of this name.
    submitted_by: str | None = None
    #: Started by this schedule.
    schedule: str | None = None

    def matches(self, pool: Any) -> bool:
        """Whether a pool in memory is one of those asked for."""
        return (
            (self.before is None or pool.id < self.before)
            and (self.state is None or pool.state == self.state)
            and (self.worker is None or self.worker in pool.jobs)
            and (self.cmd is None or self.cmd in pool.cmd)
            and (self.submitted_by is None or pool.submitted_by == self.submitted_by)
            and (self.schedule is None or pool.schedule == self.schedule)
        )


@dataclass(frozen=True)
class Delivery:
    """A webhook delivery waiting in the queue (see L{pcci.master.webhooks})."""

    id: int
    url: str
    body: bytes
    attempts: int
    created_at: float
    #: The token whose pool asked for it ("" without auth); None for the master's own hooks.
    owner: str | None = None


def due_deliveries_query(mark: str, owned: bool, busy: tuple[str, ...], lock: str = "") -> str:
    """The statement that leases due deliveries of one lane, in an engine's placeholders."""
    owners = "owner IS NOT NULL" if owned else "owner IS NULL"
    if busy:
        owners += f" AND owner NOT IN ({', '.join([mark] * len(busy))})"
    return (
        f"UPDATE deliveries SET next_at = {mark} WHERE id IN (SELECT id FROM deliveries"
        f" WHERE next_at <= {mark} AND {owners} ORDER BY next_at LIMIT {mark}{lock})"
        " RETURNING id, url, body, attempts, created_at, owner"
    )


@dataclass(frozen=True)
class StoredToken:
    """An API token made through the API: its SHA-256, never its value."""

    name: str
    digest: str
    #: C{read_only}, C{scope}, C{created_at}, C{created_by}.
    record: dict[str, Any]


class PoolStore(Protocol):
    """What the master needs of storage.  Every call runs after those before it."""

    def open(self) -> list[dict[str, Any]]:
        """Open the store (at the master's start); the records of the pools not ended."""

    def save(self, pools: list[StoredPool]) -> Deferred[None]:
        """Write these pools (new or changed) in one transaction."""

    def get(self, pool_id: str) -> Deferred[dict[str, Any] | None]:
        """A pool's record, or None."""

    def claim(self, pool_id: str) -> Deferred[dict[str, Any] | str | None]:
        """
        The record of a pool not ended, for this master to carry on with;
        the name of the master that runs it, if another; None if it ended
        or is unknown.
        """

    def page(self, query: PoolQuery, limit: int, ended_since: float = 0.0) -> Deferred[list[dict[str, Any]]]:
        """
        Summaries of pools, newest first, filtered as C{GET /pools} says,
        leaving out those that ended before C{ended_since}.
        """

    def expire(self, ended_before: float) -> Deferred[int]:
        """Delete the pools that ended before this time; how many."""

    def tokens(self) -> Deferred[list[StoredToken]]:
        """The API tokens made through the API."""

    def add_token(self, token: StoredToken) -> Deferred[bool]:
        """Keep a new token; false if one of that name is kept already."""

    def remove_token(self, name: str) -> Deferred[bool]:
        """Forget the token of this name; false if there is none."""

    def schedules(self) -> Deferred[list[Schedule]]:
        """Every schedule, with its last run, skips and latest runs."""

    def put_schedule(self, schedule: Schedule, create: bool) -> Deferred[bool]:
        """Keep a new schedule (false if one of its name exists), or change one (false if none)."""

    def remove_schedule(self, name: str) -> Deferred[bool]:
        """Forget a schedule; false if there is none."""

    def claim_run(self, name: str, at: float) -> Deferred[bool]:
        """Move a schedule's C{last_run} to C{at} if earlier: true for the one caller that did."""

    def note_run(self, name: str, run: dict[str, Any]) -> Deferred[None]:
        """Keep a run's outcome (the latest few); count it if skipped."""

    # Webhook deliveries: see pcci.master.webhooks.DeliveryStore.

    def add_delivery(self, url: str, body: bytes, now: float, owner: str | None = None) -> Deferred[None]: ...

    def due_deliveries(
        self, now: float, lease: float, most: int, owned: bool = False, busy: tuple[str, ...] = ()
    ) -> Deferred[list[Delivery]]: ...

    def queued_deliveries(self, owner: str) -> Deferred[int]: ...

    def delivery_done(self, delivery_id: int) -> Deferred[None]: ...

    def delivery_later(self, delivery_id: int, attempts: int, at: float) -> Deferred[None]: ...

    def ping(self) -> Deferred[None]:
        """Fails when the store cannot be used now (a database server gone)."""

    def close(self) -> None: ...


def page_filters(
    query: PoolQuery,
    ended_since: float,
    *,
    mark: str,
    worker_test: str,
    cmd_test: str,
    worker: str | None,
) -> tuple[str, list[Any]]:
    """
    The C{WHERE} clause of a page of pools and its arguments, in an
    engine's words: its parameter C{mark}, and how it tests a pool's
    workers and command (C{worker}, the query's, as that test wants it).
    """
    where = [f"(ended_at IS NULL OR ended_at >= {mark})"]
    args: list[Any] = [ended_since]
    for value, test in (
        (query.before, f"id < {mark}"),
        (query.state, f"state = {mark}"),
        (worker, worker_test),
        (query.cmd, cmd_test),
        (query.submitted_by, f"submitted_by = {mark}"),
        (query.schedule, f"schedule = {mark}"),
    ):
        if value is not None:
            where.append(test)
            args.append(value)
    return " AND ".join(where), args


class ThreadedStore:
    """
    A store whose calls run in one thread of its own, in the order they were
    made (a read sees every write asked before it).  Nothing is started
    until L{open}: a daemon forks after it is built, and a thread started
    before the fork is not in the daemon.

    An engine provides, run in that thread: C{_open}, C{_close}, C{_ping},
    and C{_save}, C{_unfinished}, C{_get}, C{_claim}, C{_page}, C{_expire},
    C{_tokens}, C{_add_token}, C{_remove_token}, C{_schedules},
    C{_put_schedule}, C{_remove_schedule}, C{_claim_run}, C{_note_run},
    C{_add_delivery}, C{_due_deliveries}, C{_queued_deliveries}, C{_delivery_done},
    C{_delivery_later} for the calls of L{PoolStore} of the same names.
    """

    def __init__(self, reactor: Any, name: str) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, name=name)

    def open(self) -> list[dict[str, Any]]:
        """
        Open the store and start its thread; answer the records of the pools
        that had not ended (read at once: the master's start waits for them).

        @raise StoreError: the store cannot be used.
        """
        self._open()
        self._pool.start()
        return self._unfinished()

    def _run(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, work, *args)

    def close(self) -> None:
        self._pool.stop()
        self._close()

    def save(self, pools: list[StoredPool]) -> Deferred[None]:
        return self._run(self._save, pools)

    def get(self, pool_id: str) -> Deferred[dict[str, Any] | None]:
        return self._run(self._get, pool_id)

    def claim(self, pool_id: str) -> Deferred[dict[str, Any] | str | None]:
        return self._run(self._claim, pool_id)

    def page(self, query: PoolQuery, limit: int, ended_since: float = 0.0) -> Deferred[list[dict[str, Any]]]:
        return self._run(self._page, query, limit, ended_since)

    def expire(self, ended_before: float) -> Deferred[int]:
        return self._run(self._expire, ended_before)

    def tokens(self) -> Deferred[list[StoredToken]]:
        return self._run(self._tokens)

    def add_token(self, token: StoredToken) -> Deferred[bool]:
        return self._run(self._add_token, token)

    def remove_token(self, name: str) -> Deferred[bool]:
        return self._run(self._remove_token, name)

    def schedules(self) -> Deferred[list[Schedule]]:
        return self._run(self._schedules)

    def put_schedule(self, schedule: Schedule, create: bool) -> Deferred[bool]:
        return self._run(self._put_schedule, schedule, create)

    def remove_schedule(self, name: str) -> Deferred[bool]:
        return self._run(self._remove_schedule, name)

    def claim_run(self, name: str, at: float) -> Deferred[bool]:
        return self._run(self._claim_run, name, at)

    def note_run(self, name: str, run: dict[str, Any]) -> Deferred[None]:
        return self._run(self._note_run, name, run)

    def add_delivery(self, url: str, body: bytes, now: float, owner: str | None = None) -> Deferred[None]:
        return self._run(self._add_delivery, url, body, now, owner)

    def due_deliveries(
        self, now: float, lease: float, most: int, owned: bool = False, busy: tuple[str, ...] = ()
    ) -> Deferred[list[Delivery]]:
        return self._run(self._due_deliveries, now, lease, most, owned, busy)

    def queued_deliveries(self, owner: str) -> Deferred[int]:
        return self._run(self._queued_deliveries, owner)

    def delivery_done(self, delivery_id: int) -> Deferred[None]:
        return self._run(self._delivery_done, delivery_id)

    def delivery_later(self, delivery_id: int, attempts: int, at: float) -> Deferred[None]:
        return self._run(self._delivery_later, delivery_id, attempts, at)

    def ping(self) -> Deferred[None]:
        return self._run(self._ping)


class SQLiteStore(ThreadedStore):
    """L{PoolStore} on an SQLite database file (see L{open_database})."""

    def __init__(self, path: str, reactor: Any) -> None:
        super().__init__(reactor, "pcci-store")
        self.path = path
        self._db: sqlite3.Connection | None = None

    def _open(self) -> None:
        self._db = open_database(self.path)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # Each call below runs in the store's thread, once open.

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "the store is not open"
        return self._db

    def _ping(self) -> None:
        self.db.execute("SELECT 1").fetchone()

    def _save(self, pools: list[StoredPool]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO pools (id, started_at, ended_at, state, cmd, workers,"
                " summary, record, submitted_by, schedule) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        p.id,
                        p.started_at,
                        p.ended_at,
                        p.state,
                        p.cmd,
                        " " + " ".join(p.workers) + " ",
                        json.dumps(p.summary),
                        json.dumps(p.record),
                        p.submitted_by,
                        p.schedule,
                    )
                    for p in pools
                ],
            )

    def _unfinished(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT record FROM pools WHERE ended_at IS NULL ORDER BY id"
        ).fetchall()
        return [json.loads(record) for (record,) in rows]

    def _get(self, pool_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM pools WHERE id = ?", (pool_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _claim(self, pool_id: str) -> dict[str, Any] | None:
        record = self._get(pool_id)
        return record if record is not None and record["ended_at"] is None else None

    def _page(self, query: PoolQuery, limit: int, ended_since: float) -> list[dict[str, Any]]:
        where, args = page_filters(
            query, ended_since,
            mark="?", worker_test="instr(workers, ?) > 0", cmd_test="instr(cmd, ?) > 0",
            worker=None if query.worker is None else f" {query.worker} ",
        )
        query = f"SELECT summary FROM pools WHERE {where} ORDER BY id DESC LIMIT ?"
        rows = self.db.execute(query, (*args, limit)).fetchall()
        return [json.loads(summary) for (summary,) in rows]

    def _expire(self, ended_before: float) -> int:
        with self.db:
            cursor = self.db.execute(
                "DELETE FROM pools WHERE ended_at IS NOT NULL AND ended_at < ?",
                (ended_before,),
            )
        return cursor.rowcount

    def _tokens(self) -> list[StoredToken]:
        rows = self.db.execute("SELECT name, digest, record FROM tokens ORDER BY name")
        return [StoredToken(name, digest, json.loads(record)) for name, digest, record in rows]

    def _add_token(self, token: StoredToken) -> bool:
        try:
            with self.db:
                self.db.execute(
                    "INSERT INTO tokens VALUES (?, ?, ?)",
                    (token.name, token.digest, json.dumps(token.record)),
                )
        except sqlite3.IntegrityError:
            return False
        return True

    def _remove_token(self, name: str) -> bool:
        with self.db:
            return self.db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount > 0

    def _schedules(self) -> list[Schedule]:
        rows = self.db.execute(
            "SELECT name, record, last_run, skipped, runs FROM schedules ORDER BY name"
        )
        return [
            Schedule.from_row(name, json.loads(record), last_run, skipped, json.loads(runs))
            for name, record, last_run, skipped, runs in rows
        ]

    def _put_schedule(self, schedule: Schedule, create: bool) -> bool:
        record = json.dumps(schedule.record())
        with self.db:
            if create:
                cursor = self.db.execute(
                    "INSERT INTO schedules (name, record) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (schedule.name, record),
                )
            else:
                cursor = self.db.execute(
                    "UPDATE schedules SET record = ? WHERE name = ?", (record, schedule.name)
                )
        return cursor.rowcount > 0

    def _remove_schedule(self, name: str) -> bool:
        with self.db:
            return self.db.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount > 0

    def _claim_run(self, name: str, at: float) -> bool:
        with self.db:
            return self.db.execute(
                "UPDATE schedules SET last_run = ? WHERE name = ? AND last_run < ?", (at, name, at)
            ).rowcount > 0

    def _note_run(self, name: str, run: dict[str, Any]) -> None:
        with self.db:
            row = self.db.execute("SELECT runs FROM schedules WHERE name = ?", (name,)).fetchone()
            if row is not None:
                runs = (json.loads(row[0]) + [run])[-RUNS_KEPT:]
                self.db.execute(
                    "UPDATE schedules SET runs = ?, skipped = skipped + ? WHERE name = ?",
                    (json.dumps(runs), int(run["outcome"] == SKIPPED), name),
                )

    def _add_delivery(self, url: str, body: bytes, now: float, owner: str | None) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO deliveries (url, body, created_at, next_at, owner) VALUES (?, ?, ?, ?, ?)",
                (url, body, now, now, owner),
            )

    def _due_deliveries(
        self, now: float, lease: float, most: int, owned: bool, busy: tuple[str, ...]
    ) -> list[Delivery]:
        with self.db:
            rows = self.db.execute(
                due_deliveries_query("?", owned, busy), (now + lease, now, *busy, most)
            ).fetchall()
        return [Delivery(i, url, bytes(body), n, created, owner) for i, url, body, n, created, owner in rows]

    def _queued_deliveries(self, owner: str) -> int:
        return self.db.execute("SELECT count(*) FROM deliveries WHERE owner = ?", (owner,)).fetchone()[0]

    def _delivery_done(self, delivery_id: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))

    def _delivery_later(self, delivery_id: int, attempts: int, at: float) -> None:
        with self.db:
            self.db.execute(
                "UPDATE deliveries SET attempts = ?, next_at = ? WHERE id = ?", (attempts, at, delivery_id)
            )


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
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        columns = {row[1] for row in db.execute("PRAGMA table_info(pools)")}
        for column, migration in NEW_COLUMNS.items():
            if column not in columns:
                for statement in migration.split(";"):
                    if statement.strip():
                        db.execute(statement)
        if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}:
            db.execute(DELIVERY_OWNER)
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
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


#: Seconds a change waits to be written, gathering others: a change someone
#: waits for (see L{BatchedWriter.committed}) goes in the reactor's next
#: turn instead.  Under load, what changes while one write runs goes in the
#: next.
WRITE_DELAY = 0.005

#: Seconds before writing again after a failed write (a full disk, say).
RETRY_INTERVAL = 1.0


class BatchedWriter:
    """
    Writes changed pools to a L{PoolStore}: every change made while the
    last write ran, in one transaction; a failed write is logged and
    tried again until it goes through.  C{committed(key)} fires once the
    latest change of that key is on disk.

    A change is written L{WRITE_DELAY} after it is made (or the delay its
    C{mark} gives), unless someone waits for it in a hurry: then in the
    next turn.  (A pool's start is answered once stored; its end is not,
    and its write leaves the answer the reactor's time to go out first.)
    """

    def __init__(self, store: PoolStore, clock: Any) -> None:
        self.store = store
        self.clock = clock
        self._changed: dict[str, Callable[[], StoredPool]] = {}
        #: When each changed key is to be written.
        self._due: dict[str, float] = {}
        self._waiting: dict[str, list[Deferred[None]]] = {}
        #: Keys someone waits for in a hurry.
        self._hurried: set[str] = set()
        self._in_flight: dict[str, list[Deferred[None]]] = {}
        self._drained: list[Deferred[None]] = []
        self._call: Any = None
        self._writing = False
        self._failures = 0
        #: Why the last write (or look at the store) failed, while it fails.
        self.trouble: str | None = None

    def mark(self, key: str, snapshot: Callable[[], StoredPool], delay: float = WRITE_DELAY) -> None:
        """
        C{key} changed: C{snapshot()} makes its row when it is written,
        C{delay} from now at the latest (an earlier change may have it
        written sooner).
        """
        self._changed[key] = snapshot
        now = self.clock.seconds()
        due = self._due[key] = min(self._due.get(key, now + delay), now + delay)
        self._schedule(due - now)

    def committed(self, key: str, hurry: bool = True) -> Deferred[None]:
        """
        Fires when the latest change of C{key} is written (at once if none
        waits); in a C{hurry}, that write goes in the next turn.
        """
        d: Deferred[None] = Deferred()
        if key not in self._changed and key not in self._in_flight:
            d.callback(None)
            return d
        self._waiting.setdefault(key, []).append(d)
        if hurry and not self._failures:  # a failing store keeps its pace
            self._hurried.add(key)
            self._schedule(0)
        return d

    def pending(self) -> bool:
        return bool(self._changed) or self._writing

    @property
    def failing(self) -> bool:
        """The store failed its last write or look, and has not answered since."""
        return self.trouble is not None

    def probe(self) -> Deferred[None]:
        """
        Look whether the store answers, when no write says so: a master whose
        database went away refuses new pools at once rather than hang them.
        """
        if self._writing or self._changed:
            return succeed(None)  # the write under way will tell

        def failed(failure: Any) -> None:
            if self.trouble is None:
                log.error("the store does not answer: {why}", why=failure.getErrorMessage())
            self.trouble = failure.getErrorMessage()

        def answered(_: Any) -> None:
            if not self._changed and not self._writing:
                self._answered()

        return self.store.ping().addCallbacks(answered, failed)

    def _answered(self) -> None:
        if self.trouble is not None:
            log.info("the store answers again")
        self.trouble = None

    def _schedule(self, delay: float) -> None:
        if self._writing:
            return  # _written schedules what is left
        delay = max(0.0, delay)
        if self._call is None:
            self._call = self.clock.callLater(delay, self._write_due)
        elif self._call.getTime() > self.clock.seconds() + delay:
            self._call.reset(delay)

    def _schedule_next(self, least: float = 0.0) -> None:
        """Write what changed when the first of it is due, C{least} from now at the soonest."""
        if self._hurried:
            self._schedule(0)
        elif self._changed:
            self._schedule(max(least, min(self._due.values()) - self.clock.seconds()))

    def _write_due(self) -> None:
        self._call = None
        soon = self.clock.seconds() + 0.001  # what a timer's rounding may leave a hair short
        due = [key for key in self._changed if key in self._hurried or self._due[key] <= soon]
        if due:
            self._write(due)
        else:
            self._schedule_next()

    def flush(self) -> Deferred[None]:
        """Write all that changed now; fires when it is written (or failed)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._writing or not self._changed:
            return self._idle()
        return self._write(list(self._changed))

    def _write(self, keys: list[str]) -> Deferred[None]:
        changed = {key: self._changed.pop(key) for key in keys}
        for key in keys:
            del self._due[key]
        rows = [snapshot() for snapshot in changed.values()]
        self._in_flight = {key: self._waiting.pop(key, []) for key in changed}
        self._hurried -= changed.keys()
        self._writing = True
        d = self.store.save(rows)
        d.addCallbacks(self._written, self._failed, errbackArgs=(changed,))
        return d

    def _idle(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if not self.pending():
            d.callback(None)
        else:
            self._drained.append(d)
        return d

    def _written(self, _: Any) -> None:
        self._writing = False
        self._failures = 0
        self._answered()
        in_flight, self._in_flight = self._in_flight, {}
        for waiters in in_flight.values():
            for d in waiters:
                d.callback(None)
        if self._changed:
            self._schedule_next(least=WRITE_DELAY)
        else:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _failed(self, failure: Any, changed: dict[str, Callable[[], StoredPool]]) -> None:
        self._writing = False
        self._failures += 1
        self.trouble = failure.getErrorMessage()
        if self._failures in (1, 10) or self._failures % 100 == 0:
            log.error(
                "cannot write {count} pools to the store (try {n}): {why}; trying again",
                count=len(changed),
                n=self._failures,
                why=failure.getErrorMessage(),
            )
        # Changes made meanwhile are newer: keep them over the failed ones.
        self._changed = {**changed, **self._changed}
        for key in changed:
            self._due.setdefault(key, self.clock.seconds())
        for key, waiters in self._in_flight.items():
            self._waiting.setdefault(key, [])[:0] = waiters
        self._in_flight = {}
        self._schedule(RETRY_INTERVAL)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
