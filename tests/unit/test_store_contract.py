"""
One contract, both engines: every test here runs against SQLite and against
PostgreSQL (a throwaway server, see tests/postgres.py), through the calls of
L{pcci.master.store.base.PoolStore}, the delivery lease included.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import started as result

from pcci.master.cluster.schedules import Schedule
from pcci.master.store.base import PoolQuery, StoredIdentity, StoredJoinToken, StoredPool, StoredToken
from pcci.master.store.sqlite import open_database

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A store that runs its calls at once, on each engine, and a way to open another on the same data."""
    if request.param == "sqlite":
        from test_store import SyncStore as SQLiteSync

        path = str(tmp_path / "pcci.db")
        opened: list[Any] = []

        def open_store(master: str = "m1") -> Any:
            store = SQLiteSync(open_database(path))
            store.open()
            opened.append(store)
            return store
    else:
        from postgres import SyncStore as PostgresSync

        url = request.getfixturevalue("pg_url")
        opened = []

        def open_store(master: str = "m1") -> Any:
            store = PostgresSync(url, None, master)
            store.open()
            opened.append(store)
            return store

    yield open_store
    for store in opened:
        store.close()


def pool(pool_id: str, workers: list[str], cmd: str = "true", ended: float | None = None) -> StoredPool:
    state = "running" if ended is None else "ok"
    return StoredPool(
        id=pool_id, started_at=1.0, ended_at=ended, state=state, cmd=cmd, workers=workers,
        summary={"id": pool_id, "state": state}, record={"id": pool_id, "ended_at": ended},
        submitted_by="alice",
    )


def test_pools_are_kept_paged_and_expired(engine: Any) -> None:
    store = engine()
    result(store.pools.save([pool("p1", ["a", "b"], "echo one", 20.0), pool("p2", ["b"], "uname")]))
    assert result(store.pools.get("p1"))["ended_at"] == 20.0
    assert result(store.pools.get("nope")) is None
    ids = lambda page: [p["id"] for p in page]  # noqa: E731
    assert ids(result(store.pools.page(PoolQuery(), 10))) == ["p2", "p1"]
    assert ids(result(store.pools.page(PoolQuery(), 1))) == ["p2"]
    assert ids(result(store.pools.page(PoolQuery(before="p2"), 10))) == ["p1"]
    assert ids(result(store.pools.page(PoolQuery(worker="a"), 10))) == ["p1"]
    assert ids(result(store.pools.page(PoolQuery(cmd="name"), 10))) == ["p2"]
    assert ids(result(store.pools.page(PoolQuery(submitted_by="bob"), 10))) == []
    assert result(store.pools.claim("p1")) is None  # ended: nothing to carry on
    assert result(store.pools.expire(30.0)) == 1
    assert ids(result(store.pools.page(PoolQuery(), 10))) == ["p2"]


def test_tokens_are_kept_by_name(engine: Any) -> None:
    store = engine()
    alice = StoredToken("alice", "digest-a", {"read_only": True})
    assert result(store.tokens.add(alice)) is True
    assert result(store.tokens.add(StoredToken("alice", "digest-b", {}))) is False  # the name is taken
    assert result(store.tokens.add(StoredToken("bob", "digest-c", {}))) is True
    assert result(engine("m2").tokens.all()) == [alice, StoredToken("bob", "digest-c", {})]  # seen from another
    assert result(store.tokens.remove("alice")) is True
    assert result(store.tokens.remove("alice")) is False
    assert [t.name for t in result(store.tokens.all())] == ["bob"]


def test_schedules_are_kept_and_a_run_is_claimed_once(engine: Any) -> None:
    store, other = engine("m1"), engine("m2")
    tick = Schedule(name="tick", cron="*/5 * * * *", job={"cmd": "true", "workers": ["a"]}, created_by="alice")
    assert result(store.schedules.put(tick, True)) is True
    assert result(store.schedules.put(tick, True)) is False  # exists
    assert result(store.schedules.claim_run("tick", 300.0)) is True
    assert result(other.schedules.claim_run("tick", 300.0)) is False  # that run is the first master's
    assert result(other.schedules.claim_run("tick", 600.0)) is True
    result(store.schedules.note_run("tick", {"outcome": "skipped", "at": 600.0}))
    (kept,) = result(other.schedules.all())
    assert kept.last_run == 600.0 and kept.skipped == 1
    assert result(store.schedules.remove("tick")) is True
    assert result(other.schedules.all()) == []


def test_a_delivery_is_leased_then_due_again_unless_done(engine: Any) -> None:
    store = engine()
    result(store.deliveries.add("http://h/1", b"one", 100.0))
    result(store.deliveries.add("http://h/2", b"two", 100.0, owner="alice"))
    (mine,) = result(store.deliveries.due(100.0, 30.0, 10))  # the master's own lane
    assert (mine.url, mine.body, mine.attempts, mine.owner) == ("http://h/1", b"one", 0, None)
    assert result(store.deliveries.due(110.0, 30.0, 10)) == []  # leased until 130
    (again,) = result(store.deliveries.due(131.0, 30.0, 10))  # the lease ran out
    assert again.id == mine.id
    result(store.deliveries.later(mine.id, 1, 200.0))
    assert result(store.deliveries.due(199.0, 30.0, 10)) == []
    (later,) = result(store.deliveries.due(200.0, 30.0, 10))
    assert later.attempts == 1
    result(store.deliveries.done(mine.id))
    assert result(store.deliveries.due(1000.0, 30.0, 10)) == []
    # Users' lane: by owner, a busy owner's left for later.
    assert result(store.deliveries.queued("alice")) == 1
    assert result(store.deliveries.due(100.0, 30.0, 10, owned=True, busy=("alice",))) == []
    (theirs,) = result(store.deliveries.due(100.0, 30.0, 10, owned=True))
    assert theirs.owner == "alice"


def test_the_delivery_lease_never_hands_one_delivery_to_two_masters(engine: Any) -> None:
    """Masters leasing at once (each in a thread of its own) share the queue: each delivery goes to one."""
    first, second = engine("m1"), engine("m2")
    for n in range(60):
        result(first.deliveries.add(f"http://h/{n}", b"x", 100.0))
    taken: dict[str, list[int]] = {"m1": [], "m2": []}
    start = threading.Barrier(2)

    def lease(store: Any, name: str) -> None:
        start.wait()
        for _ in range(100):  # 60 deliveries, 3 at a time: far fewer leases than this
            batch = result(store.deliveries.due(100.0, 60.0, 3))
            if not batch:
                return
            taken[name] += [d.id for d in batch]

    threads = [threading.Thread(target=lease, args=(s, n)) for s, n in ((first, "m1"), (second, "m2"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(taken["m1"] + taken["m2"]) == sorted(set(taken["m1"] + taken["m2"]))  # none twice
    assert len(taken["m1"]) + len(taken["m2"]) == 60  # and none left behind


def identity(name: str, fingerprint: str = "SHA256:a", state: str = "approved") -> StoredIdentity:
    return StoredIdentity(name, fingerprint, state, {"labels": {}, "joined_at": 1.0, "how": "token"})


def test_identities_own_their_names_until_revoked(engine: Any) -> None:
    store = engine()
    assert result(store.identities.put(identity("w")))
    assert result(store.identities.put(identity("w")))  # the same key: kept again
    assert not result(store.identities.put(identity("w", "SHA256:b")))  # another key: refused
    moved = result(store.identities.set_state("w", "revoked", ("approved",), {"decided_by": "admin"}))
    assert (moved.state, moved.record["decided_by"]) == ("revoked", "admin")
    assert result(store.identities.set_state("w", "approved", ("pending",), {})) is None
    assert result(store.identities.put(identity("w", "SHA256:b")))  # revoked: the name is free
    assert [(i.name, i.fingerprint) for i in result(store.identities.all())] == [("w", "SHA256:b")]
    assert result(store.identities.get("nobody")) is None


def test_join_tokens_are_kept_hashed_and_revoked(engine: Any) -> None:
    store = engine()
    record = {"name": "*", "labels": {}, "uses": 1, "used": 0, "expires_at": 100.0}
    result(store.identities.add_join_token(StoredJoinToken("t1", "digest", record)))
    assert result(store.identities.revoke_join_token("t1"))
    assert not result(store.identities.revoke_join_token("t2"))
    (kept,) = result(store.identities.join_tokens())
    assert (kept.id, kept.digest, kept.record["revoked"]) == ("t1", "digest", True)


def test_a_single_use_token_joins_one_worker_when_two_masters_join_at_once(engine: Any) -> None:
    """Two masters spending the same token at once (each in a thread): one worker joins."""
    first, second = engine("m1"), engine("m2")
    for n in range(20):
        record = {"name": "*", "labels": {}, "uses": 1, "used": 0, "expires_at": 100.0}
        result(first.identities.add_join_token(StoredJoinToken(f"t{n}", "d", record)))
    outcomes: dict[str, list[str]] = {"m1": [], "m2": []}
    start = threading.Barrier(2)

    def spend(store: Any, name: str) -> None:
        start.wait()
        for n in range(20):
            outcome = result(store.identities.join(
                f"t{n}", "d",
                lambda record: ("token", "join token used up") if record["used"] >= record["uses"] else None,
                lambda record, n=n: identity(f"{name}-{n}", f"SHA256:{name}"),
            ))
            outcomes[name].append("ok" if isinstance(outcome, StoredIdentity) else outcome[0])

    threads = [threading.Thread(target=spend, args=(s, n)) for s, n in ((first, "m1"), (second, "m2"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for n in range(20):
        assert sorted([outcomes["m1"][n], outcomes["m2"][n]]) == ["ok", "token"], n
    assert len(result(first.identities.all())) == 20


def test_the_store_answers_a_ping(engine: Any) -> None:
    assert result(engine().ping()) is None


def test_shells_are_kept_with_their_recordings_and_expired(engine: Any) -> None:
    store = engine()
    result(store.shells.opened("s1", 10.0, "alice", {"id": "s1", "by": "alice", "open": True}))
    result(store.shells.opened("s2", 20.0, "bob", {"id": "s2", "by": "bob", "open": True}))
    for seq, piece in enumerate([b'{"version": 2}\n', b'[0.1, "o", "EOM\\u0000"]\n']):
        result(store.shells.record("s1", seq, piece))
    result(store.shells.ended("s1", 30.0, {"id": "s1", "by": "alice", "open": False, "status": 0}))
    other = engine("m2")
    assert [s["id"] for s in result(other.shells.page(10))] == ["s2", "s1"]  # newest first, from any master
    assert result(other.shells.page(10, by="alice")) == [{"id": "s1", "by": "alice", "open": False, "status": 0}]
    assert result(other.shells.get("s1"))["status"] == 0 and result(other.shells.get("nope")) is None
    assert result(other.shells.recording("s1")) == b'{"version": 2}\n[0.1, "o", "EOM\\u0000"]\n'
    assert result(store.shells.expire(25.0)) == 0  # s1 ended at 30, s2 is open
    assert result(store.shells.expire(31.0)) == 1
    assert [s["id"] for s in result(store.shells.page(10))] == ["s2"]
    assert result(store.shells.recording("s1")) == b""


def test_workers_facts_are_kept_by_name(engine: Any) -> None:
    store = engine()
    result(store.facts.put([("pi01", 10.0, {"cpus": 4, "os": {"id": "debian"}}), ("pi02", 11.0, {"cpus": 8})]))
    result(store.facts.put([("pi01", 12.0, {"cpus": 4, "os": {"id": "debian", "version": "12"}})]))
    assert result(engine("m2").facts.all()) == {
        "pi01": (12.0, {"cpus": 4, "os": {"id": "debian", "version": "12"}}), "pi02": (11.0, {"cpus": 8}),
    }
