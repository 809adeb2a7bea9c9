"""The SQLite store, and the state over it: round trips, retention, schema, bad files."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes import FakeLink
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from pcci.master.cluster.dispatch import PoolOrder
from pcci.master.cluster.events import pool_events
from pcci.master.cluster.schedules import RUNS_KEPT, SKIPPED, STARTED, Schedule
from pcci.master.cluster.state import ClusterState, Settings
from pcci.master.store.base import PoolQuery, StoredPool, StoreError
from pcci.master.store.sqlite import SCHEMA_VERSION, SQLiteDatabase, open_database
from pcci.master.store.tables import Store
from pcci.master.store.writer import WRITE_DELAY, BatchedWriter


def test_a_new_database_carries_its_schema_version(tmp_path: Path) -> None:
    db = open_database(str(tmp_path / "pcci.db"))
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    open_database(str(tmp_path / "pcci.db")).close()  # and opens again


def test_a_database_of_a_newer_pcci_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "pcci.db"
    db = open_database(str(path))
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="written by a newer pcci"):
        open_database(str(path))
    assert path.read_bytes() == before


#: The tables of pcci's first SQLite schema, as a master of that version left them.
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE pools (id TEXT PRIMARY KEY, started_at REAL NOT NULL, ended_at REAL, state TEXT NOT NULL,
    cmd TEXT NOT NULL, workers TEXT NOT NULL, summary TEXT NOT NULL, record TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO pools VALUES ('p1', 1.0, 2.0, 'ok', 'true', ' a ', '{"id": "p1", "submitted_by": "alice"}', '{}');
"""


def _tables(db: sqlite3.Connection) -> set[str]:
    return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.mark.parametrize("owner_early", [False, True])
def test_an_older_database_is_brought_to_this_schema_one_version_at_a_time(tmp_path: Path, owner_early: bool) -> None:
    """Schema 1 to the latest, keeping its pools; a column a development version added early is passed over."""
    path = str(tmp_path / "pcci.db")
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_1)
    if owner_early:
        old.executescript("CREATE TABLE deliveries (id INTEGER PRIMARY KEY, url TEXT NOT NULL, body BLOB NOT NULL,"
                          " created_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL,"
                          " owner TEXT)")
    old.close()
    db = open_database(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert {"pools", "tokens", "schedules", "deliveries", "join_tokens", "identities"} <= _tables(db)
    assert db.execute("SELECT submitted_by, schedule FROM pools WHERE id = 'p1'").fetchone() == ("alice", None)
    assert "owner" in {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
    db.close()
    store = SyncStore(open_database(path))
    assert [p["id"] for p in result(store.pools.page(PoolQuery(submitted_by="alice"), 10))] == ["p1"]
    store.close()


def test_a_new_database_and_an_upgraded_one_have_the_same_tables(tmp_path: Path) -> None:
    new = open_database(str(tmp_path / "new.db"))
    old = sqlite3.connect(str(tmp_path / "old.db"))
    old.executescript(SCHEMA_1)
    old.close()
    upgraded = open_database(str(tmp_path / "old.db"))
    for table in _tables(new):
        columns = [row[1:3] for row in new.execute(f"PRAGMA table_info({table})")]
        assert [row[1:3] for row in upgraded.execute(f"PRAGMA table_info({table})")] == columns, table
    assert _tables(upgraded) == _tables(new)
    new.close()
    upgraded.close()


@pytest.mark.parametrize(
    "content, why",
    [(b"this is not a database at all" * 100, "cannot use the database"), (None, "not a pcci database")],
)
def test_a_corrupt_or_foreign_file_is_refused(tmp_path: Path, content: bytes | None, why: str) -> None:
    path = tmp_path / "pcci.db"
    if content is None:
        foreign = sqlite3.connect(path)
        foreign.execute("CREATE TABLE other (x)")
        foreign.commit()
        foreign.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=why):
        open_database(str(path))
    assert path.read_bytes() == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_directory_is_refused(tmp_path: Path) -> None:  # pragma: no cover
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StoreError):
            open_database(str(tmp_path / "pcci.db"))
    finally:
        tmp_path.chmod(0o700)


class SyncDatabase(SQLiteDatabase):
    """The database with its calls run at once: a unit test has no thread pool running."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(":memory:", None)
        self._db = db

    def open(self) -> None:
        pass

    def run(self, work, *args):  # type: ignore[override]
        from twisted.internet.defer import execute

        return execute(self.transact, work, *args)

    def close(self) -> None:
        self.disconnect()


def SyncStore(db: sqlite3.Connection) -> Store:
    return Store(SyncDatabase(db))


def cluster(store: SyncStore, clock: Clock, **kwargs) -> tuple[ClusterState, FakeLink]:
    state = ClusterState(clock, Settings(retention=100, **kwargs), store)
    state.history.start()
    link = FakeLink("a")
    state.roster.join(link)
    return state, link


def submitted(clock: Clock, d):
    """The pool a submit fires with, once its write (in the next turn) is done."""
    clock.advance(0)
    return result(d)


def result(d):
    found: list = []
    d.addBoth(found.append)
    (value,) = found
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


def test_pools_round_trip_through_the_store(tmp_path: Path) -> None:
    store = SyncStore(open_database(str(tmp_path / "pcci.db")))
    clock = Clock()
    clock.advance(1000)
    state, link = cluster(store, clock, cache=0)
    pool = submitted(clock, state.dispatcher.submit(PoolOrder("echo hi", submitted_by="alice"), ["a"]))
    state.reports.job_started("a", pool.id, 42)
    state.reports.job_output("a", pool.id, "hi\n", "stdout")
    state.reports.job_output("a", pool.id, "err\n", "stderr")
    state.reports.job_ended("a", pool.id, 0)
    before = pool.to_json()
    clock.advance(0.1)  # the write, then the ack after it
    assert link.acked == [pool.id]
    assert pool.id not in state.history.pools  # memory let it go: the store has it
    found = result(state.history.find(pool.id))
    assert found.to_json() == before
    assert found.submitted_by == "alice"
    assert [e.name for e in pool_events(found)] == [
        "started", "output", "output", "ended",
    ]


def test_finished_pools_past_the_retention_are_deleted(tmp_path: Path) -> None:
    store = SyncStore(open_database(str(tmp_path / "pcci.db")))
    clock = Clock()
    clock.advance(1000)
    state, _ = cluster(store, clock, cache=0)
    old = submitted(clock, state.dispatcher.submit(PoolOrder("true"), ["a"]))
    state.reports.job_ended("a", old.id, 0)
    clock.advance(50)
    new = submitted(clock, state.dispatcher.submit(PoolOrder("true"), ["a"]))
    state.reports.job_ended("a", new.id, 0)
    clock.advance(60)  # old ended 110 s ago, new 60 s ago; the sweep runs
    assert result(state.history.find(old.id)) is None
    assert result(state.history.find(new.id)) is not None
    rows = store.db._db.execute("SELECT id FROM pools").fetchall()
    assert rows == [(new.id,)]


def test_running_pools_come_back_with_a_new_master(tmp_path: Path) -> None:
    path = str(tmp_path / "pcci.db")
    store = SyncStore(open_database(path))
    clock = Clock()
    state, _ = cluster(store, clock)
    state.dispatcher.submit(PoolOrder("sleep 9"), ["a"])
    (pool,) = state.history.pools.values()
    state.reports.job_started("a", pool.id, 7)  # before the pool's first write
    clock.advance(0.1)
    store.close()
    # A new master on the same file.
    store = SyncStore(open_database(path))
    clock = Clock()
    state = ClusterState(clock, Settings(reconnect_grace=30), store)
    assert state.reports.carry_on(store.open()) == 1
    again = state.history.pools[pool.id]
    assert again.jobs["a"].state == "running" and again.jobs["a"].pid == 7
    link = FakeLink("a", held_jobs=[{"pool": pool.id, "ended": False}])
    state.roster.join(link)
    assert link.attached == [(pool.id, 0)]  # send everything: this master has no output
    state.reports.job_output("a", pool.id, "done\n", "stdout", 1)
    state.reports.job_ended("a", pool.id, 0)
    assert again.state == "ok" and again.jobs["a"].output.text() == "done\n"
    clock.advance(30)
    assert again.jobs["a"].state == "ok"


def test_a_job_whose_worker_does_not_come_back_is_lost_after_the_grace(tmp_path: Path) -> None:
    path = str(tmp_path / "pcci.db")
    store = SyncStore(open_database(path))
    first = Clock()
    state, _ = cluster(store, first)
    pool = submitted(first, state.dispatcher.submit(PoolOrder("sleep 9"), ["a"]))
    store.close()
    store = SyncStore(open_database(path))
    clock = Clock()
    state = ClusterState(clock, Settings(reconnect_grace=30), store)
    state.reports.carry_on(store.open())
    clock.advance(30)
    job = state.history.pools[pool.id].jobs["a"]
    assert job.state == "lost" and "did not come back" in job.output.text()


def test_listing_pages_and_filters_from_the_store(tmp_path: Path) -> None:
    store = SyncStore(open_database(str(tmp_path / "pcci.db")))
    clock = Clock()
    clock.advance(1000)
    state, _ = cluster(store, clock, cache=5)
    state.roster.join(FakeLink("b"))
    ids = []
    for i in range(30):
        pool = submitted(clock, state.dispatcher.submit(PoolOrder(f"job {i}"), ["a"] if i % 2 else ["b"]))
        state.reports.job_ended(pool.jobs and next(iter(pool.jobs)), pool.id, i % 3)
        ids.append(pool.id)
    page = result(state.history.page(PoolQuery(), 10))
    listed = [p.id if hasattr(p, "id") else p["id"] for p in page]
    assert listed == ids[::-1][:10]
    # Older than the 11th, ok (status 0: every third), on a (odd ones), with "job" in the command.
    page = result(state.history.page(PoolQuery(ids[10], "ok", "a", "job"), 100))
    listed = [p.id if hasattr(p, "id") else p["id"] for p in page]
    assert listed == [ids[9], ids[3]]


def test_a_failed_write_is_logged_and_tried_again_until_it_goes_through() -> None:
    from twisted.internet.defer import fail, succeed

    from pcci.master.store.base import StoredPool
    from pcci.master.store.writer import RETRY_INTERVAL, BatchedWriter

    class FullDisk:
        def __init__(self) -> None:
            self.failures = 2
            self.saved: list[list[str]] = []

        def save(self, rows):
            if self.failures:
                self.failures -= 1
                return fail(sqlite3.OperationalError("database or disk is full"))
            self.saved.append([row.id for row in rows])
            return succeed(None)

    clock = Clock()
    store = FullDisk()
    writer = BatchedWriter(SimpleNamespace(pools=store), clock)  # type: ignore[arg-type]
    row = StoredPool("p1", 0.0, None, "running", "x", ["a"], {}, {})
    writer.mark("p1", lambda: row)
    done: list = []
    writer.committed("p1").addCallback(done.append)
    clock.advance(0)
    assert done == [] and store.saved == []
    clock.advance(RETRY_INTERVAL)
    assert done == []
    writer.mark("p2", lambda: StoredPool("p2", 0.0, None, "running", "x", ["a"], {}, {}))
    clock.advance(RETRY_INTERVAL)
    assert store.saved == [["p1", "p2"]] and done == [None]


class Recorder:
    """A store that writes at once, keeping the keys of each write."""

    def __init__(self) -> None:
        self.saved: list[list[str]] = []

    def save(self, rows: list[StoredPool]) -> Deferred[None]:
        self.saved.append([row.id for row in rows])
        return succeed(None)


def running_row(key: str) -> StoredPool:
    return StoredPool(key, 0.0, None, "running", "x", ["a"], {}, {})


def test_a_change_waits_to_be_written_with_others_unless_someone_hurries() -> None:
    clock = Clock()
    store = Recorder()
    writer = BatchedWriter(SimpleNamespace(pools=store), clock)  # type: ignore[arg-type]
    writer.mark("ended", lambda: running_row("ended"))
    acked: list = []
    writer.committed("ended", hurry=False).addCallback(acked.append)  # an ack waits, calmly
    clock.advance(0)
    assert store.saved == []
    writer.mark("other", lambda: running_row("other"))
    clock.advance(WRITE_DELAY)
    assert store.saved == [["ended", "other"]] and acked == [None]
    # A new pool's answer waits for its write: the next turn.
    writer.mark("new", lambda: running_row("new"))
    answered: list = []
    writer.committed("new").addCallback(answered.append)
    clock.advance(0)
    assert store.saved[-1] == ["new"] and answered == [None]


def test_a_change_with_a_longer_delay_waits_for_it_alone() -> None:
    """A big pool's row waits its own delay, gathering its changes, while a
    small pool's changes are written at the usual pace; a flush writes all."""
    clock = Clock()
    store = Recorder()
    writer = BatchedWriter(SimpleNamespace(pools=store), clock)  # type: ignore[arg-type]
    writer.mark("big", lambda: running_row("big"), delay=0.5)
    writer.mark("small", lambda: running_row("small"))
    clock.advance(WRITE_DELAY)
    assert store.saved == [["small"]]
    for _ in range(10):  # the big pool changes on: its write is not put off
        writer.mark("big", lambda: running_row("big"), delay=0.5)
        clock.advance(0.04)
    assert store.saved == [["small"]]
    clock.advance(0.1)  # 0.5 s after its first change
    assert store.saved == [["small"], ["big"]]
    # Ended, the big pool is written as soon as a small one.
    writer.mark("big", lambda: running_row("big"), delay=0.5)
    writer.mark("big", lambda: running_row("big"))
    clock.advance(WRITE_DELAY)
    assert store.saved[-1] == ["big"]
    writer.mark("big", lambda: running_row("big"), delay=0.5)
    writer.flush()
    assert len(store.saved) == 4 and not writer.pending()


def test_named_tokens() -> None:
    import tempfile

    from pcci.auth import read_tokens

    with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as f:
        f.write("a" * 20 + " name=ops\n" + "b" * 20 + " read name=grafana\n" + "c" * 20 + "\n")
    tokens = read_tokens(f.name)
    assert [(t.name, t.read_only) for t in tokens] == [("ops", False), ("grafana", True), ("token-3", False)]
    assert read_tokens(f.name, unnamed="admin")[2].name == "admin"
    assert "aaaa" not in repr(tokens[0])
    os.unlink(f.name)


def test_a_store_that_stops_answering_refuses_new_pools_until_it_is_back(tmp_path: Path) -> None:
    from twisted.internet.defer import fail, succeed

    from pcci.master.cluster.history import PROBE_INTERVAL, StoreUnavailable

    store = SyncStore(open_database(str(tmp_path / "pcci.db")))
    answers = [fail(OSError("connection refused")), succeed(None)]
    store.ping = lambda: answers.pop(0)  # type: ignore[method-assign]
    clock = Clock()
    state, _ = cluster(store, clock)
    clock.advance(PROBE_INTERVAL)  # the store does not answer
    with pytest.raises(StoreUnavailable, match="connection refused"):
        state.dispatcher.submit(PoolOrder("true"), ["a"])
    assert state.history.pools == {}
    clock.advance(PROBE_INTERVAL)  # it answers again
    assert submitted(clock, state.dispatcher.submit(PoolOrder("true"), ["a"])).jobs


def check_schedules_in(store, other) -> None:
    """
    Schedules in C{store}, and in C{other}, a second master's store on the
    same database: kept, changed, claimed once each run, their runs noted.
    """
    tick = Schedule(name="tick", cron="*/5 * * * *", job={"cmd": "true", "workers": ["a"]}, created_by="alice")
    assert result(store.schedules.put(tick, True)) is True
    assert result(store.schedules.put(tick, True)) is False  # the name is taken
    assert result(store.schedules.put(replace(tick, name="nope"), False)) is False  # nothing to change
    assert result(store.schedules.put(replace(tick, paused=True, job={"cmd": "id"}), False)) is True
    (found,) = result(other.schedules.all())
    assert (found.name, found.paused, found.job, found.created_by) == ("tick", True, {"cmd": "id"}, "alice")
    # Each run is started by one master: the first to claim it.
    assert [result(s.schedules.claim_run("tick", 300.0)) for s in (store, other, store)] == [True, False, False]
    assert result(other.schedules.claim_run("tick", 200.0)) is False  # older than the latest
    assert result(other.schedules.claim_run("tick", 600.0)) is True
    for at in range(RUNS_KEPT + 2):
        outcome = SKIPPED if at % 2 else STARTED
        result(store.schedules.note_run("tick", {"at": float(at), "outcome": outcome}))
    (found,) = result(store.schedules.all())
    assert found.last_run == 600.0 and found.skipped == (RUNS_KEPT + 2) // 2
    assert [run["at"] for run in found.runs] == [float(at) for at in range(2, RUNS_KEPT + 2)]  # the latest
    assert result(other.schedules.remove("tick")) is True
    assert result(store.schedules.remove("tick")) is False
    assert result(store.schedules.all()) == []


def test_schedules_are_kept_and_each_run_claimed_once(tmp_path: Path) -> None:
    path = str(tmp_path / "pcci.db")
    store, other = SyncStore(open_database(path)), SyncStore(open_database(path))
    try:
        check_schedules_in(store, other)
    finally:
        store.close()
        other.close()


def check_upgrades_in(store) -> None:
    """Rollouts kept by master: those not ended and the latest ended, oldest first; a change replaces its row."""
    def rollout(rollout_id: str, started: float, ended: float | None) -> dict:
        return {"id": rollout_id, "started_at": started, "ended_at": ended, "workers": {"w1": {"state": "sent"}}}

    for record in (rollout("u1", 1.0, 2.0), rollout("u2", 3.0, 4.0), rollout("u3", 5.0, None)):
        result(store.upgrades.put("m1", record))
    result(store.upgrades.put("m2", rollout("u4", 6.0, None)))
    result(store.upgrades.put("m1", {**rollout("u3", 5.0, None), "workers": {"w1": {"state": "done"}}}))
    found = result(store.upgrades.of("m1", 1))
    assert [r["id"] for r in found] == ["u2", "u3"] and found[1]["workers"]["w1"]["state"] == "done"
    assert [r["id"] for r in result(store.upgrades.of("m2", 5))] == ["u4"]


def test_upgrades_are_kept_by_master(tmp_path: Path) -> None:
    store = SyncStore(open_database(str(tmp_path / "pcci.db")))
    try:
        check_upgrades_in(store)
    finally:
        store.close()
