"""The PostgreSQL store against a throwaway server: the same calls as SQLite's."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from fakes import started as result
from postgres import SyncStore
from test_store import check_schedules_in, check_upgrades_in

from pcci.master.store.base import PoolQuery, StoredPool, StoreError
from pcci.master.store.postgres import SCHEMA_VERSION, check_database, is_postgres_url


def pool(pool_id: str, workers: list[str], cmd: str = "true", ended: float | None = None) -> StoredPool:
    state = "running" if ended is None else "ok"
    return StoredPool(
        id=pool_id, started_at=1.0, ended_at=ended, state=state, cmd=cmd, workers=workers,
        summary={"id": pool_id, "state": state}, record={"id": pool_id, "ended_at": ended},
    )


def test_which_urls_are_postgresql() -> None:
    assert is_postgres_url("postgresql://pcci@db.lab/pcci")
    assert is_postgres_url("postgresql:///pcci?host=/run/postgresql")
    assert not is_postgres_url("/var/lib/pcci/pcci.db") and not is_postgres_url(":memory:")


def test_pools_round_trip_and_page(pg_url: str) -> None:
    store = SyncStore(pg_url, None, "m1")
    assert store.open() == []
    result(store.pools.save([pool("p1", ["a", "b"], "echo one"), pool("p2", ["b"], "uname", 10.0)]))
    result(store.pools.save([pool("p1", ["a", "b"], "echo one", 20.0)]))  # changed: written again
    assert result(store.pools.get("p1")) == {"id": "p1", "ended_at": 20.0, "owner": "m1"}
    assert result(store.pools.get("nope")) is None
    ids = lambda page: [p["id"] for p in page]  # noqa: E731
    assert ids(result(store.pools.page(PoolQuery(), 10))) == ["p2", "p1"]
    assert ids(result(store.pools.page(PoolQuery(before="p2"), 10))) == ["p1"]
    assert ids(result(store.pools.page(PoolQuery(worker="a"), 10))) == ["p1"]
    assert ids(result(store.pools.page(PoolQuery(cmd="name"), 10))) == ["p2"]
    assert ids(result(store.pools.page(PoolQuery(), 10, ended_since=15.0))) == ["p1"]
    assert result(store.pools.expire(15.0)) == 1
    assert ids(result(store.pools.page(PoolQuery(), 10))) == ["p1"]
    result(store.pools.save([pool("p3", ["c"])]))
    store.close()
    again = SyncStore(pg_url, None, "m1")
    assert again.open() == [{"id": "p3", "ended_at": None}]  # not ended: carried on
    again.close()


def test_a_newer_schema_is_refused_and_left_alone(pg_url: str) -> None:
    check_database(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("UPDATE meta SET value = %s", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match="written by a newer pcci"):
        check_database(pg_url)


def test_an_older_database_is_brought_to_this_schema_one_version_at_a_time(pg_url: str) -> None:
    """Schema 1 (one master, pools only) to the latest, keeping its pools, carried on by the first master."""
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            " CREATE TABLE pools (id TEXT PRIMARY KEY, started_at DOUBLE PRECISION NOT NULL,"
            " ended_at DOUBLE PRECISION, state TEXT NOT NULL, cmd TEXT NOT NULL, workers TEXT[] NOT NULL,"
            " summary TEXT NOT NULL, record TEXT NOT NULL);"
            " INSERT INTO meta VALUES ('schema_version', '1');"
            " INSERT INTO pools VALUES ('p1', 1.0, NULL, 'running', 'true', ARRAY['a'],"
            " '{\"id\": \"p1\", \"submitted_by\": \"alice\"}', '{\"id\": \"p1\"}')"
        )
    store = SyncStore(pg_url, None, "m1")
    assert store.open() == [{"id": "p1"}]
    assert [p["id"] for p in result(store.pools.page(PoolQuery(submitted_by="alice"), 10))] == ["p1"]
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as connection:
        assert connection.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
        tables = {t for (t,) in connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
        assert {"masters", "workers", "mail", "events", "tokens", "schedules", "deliveries",
                "join_tokens", "identities"} <= tables


def test_a_foreign_pools_table_is_refused(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE pools (swimmers INT)")
    with pytest.raises(StoreError, match="not pcci's"):
        check_database(pg_url)


def test_an_unreachable_database_is_one_sentence() -> None:
    with pytest.raises(StoreError, match="cannot reach the postgresql database nope"):
        check_database("postgresql:///nope?host=/nonexistent&connect_timeout=1")


def test_a_broken_connection_is_made_again_at_the_next_call(pg_url: str, postgres: Any) -> None:
    store = SyncStore(pg_url, None, "m1")
    store.open()
    result(store.pools.save([pool("p1", ["a"])]))
    postgres.stop()
    try:
        with pytest.raises((psycopg.Error, StoreError)):
            result(store.pools.get("p1"))
    finally:
        postgres.start()
    assert result(store.pools.get("p1")) == {"id": "p1", "ended_at": None, "owner": "m1"}
    store.close()


def test_schedules_are_kept_and_each_run_claimed_once_among_masters(pg_url: str) -> None:
    store, other = SyncStore(pg_url, None, "m1"), SyncStore(pg_url, None, "m2")
    for s in (store, other):
        s.open()
    try:
        check_schedules_in(store, other)
    finally:
        store.close()
        other.close()


def test_upgrades_are_kept_by_master(pg_url: str) -> None:
    store = SyncStore(pg_url, None, "m1")
    store.open()
    try:
        check_upgrades_in(store)
    finally:
        store.close()
