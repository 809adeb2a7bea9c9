"""
A store whose calls run in one thread of its own, in order: what both
engines share (see L{pcci.master.store.sqlite} and
L{pcci.master.store.postgres}).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from pcci.master.cluster.schedules import Schedule
from pcci.master.store import identities as ids
from pcci.master.store.base import (
    Delivery,
    PoolQuery,
    Refusal,
    StoredIdentity,
    StoredJoinToken,
    StoredPool,
    StoredToken,
)

T = TypeVar("T")


class ThreadedStore:
    """
    A store whose calls run in one thread of its own, in the order they were
    made (a read sees every write asked before it).  Nothing is started
    until L{open}: a daemon forks after it is built, and a thread started
    before the fork is not in the daemon.

    An engine provides the calls below, run in that thread, for the calls
    of L{PoolStore} of the same names.
    """

    _open: Callable[[], None]
    _close: Callable[[], None]
    _ping: Callable[[], None]
    _save: Callable[[list[StoredPool]], None]
    _unfinished: Callable[[], list[dict[str, Any]]]
    _get: Callable[[str], dict[str, Any] | None]
    _claim: Callable[[str], dict[str, Any] | str | None]
    _page: Callable[[PoolQuery, int, float], list[dict[str, Any]]]
    _expire: Callable[[float], int]
    _tokens: Callable[[], list[StoredToken]]
    _add_token: Callable[[StoredToken], bool]
    _remove_token: Callable[[str], bool]
    _schedules: Callable[[], list[Schedule]]
    _put_schedule: Callable[[Schedule, bool], bool]
    _remove_schedule: Callable[[str], bool]
    _claim_run: Callable[[str, float], bool]
    _note_run: Callable[[str, dict[str, Any]], None]
    _add_delivery: Callable[[str, bytes, float, str | None], None]
    _due_deliveries: Callable[[float, float, int, bool, tuple[str, ...]], list[Delivery]]
    _queued_deliveries: Callable[[str], int]
    _delivery_done: Callable[[int], None]
    _delivery_later: Callable[[int, int, float], None]
    #: C{work(cursor)} in one transaction, and the engine's SQL: its
    #: parameter mark, the clause that locks a row read, and what tells the
    #: other masters an identity changed (C{notify(cursor, name)}).
    _transact: Callable[[Callable[[Any], Any]], Any]
    _mark: str
    _lock: str
    _identity_changed: Callable[[Any, str], None]

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

    # Join tokens and identities: the engines' SQL is one (see identities.py).

    def _sql(self, work: Callable[..., T], *args: Any) -> Deferred[T]:
        return self._run(self._transact, lambda cursor: work(cursor, self._mark, *args))

    def join_tokens(self) -> Deferred[list[StoredJoinToken]]:
        return self._sql(ids.join_tokens)

    def add_join_token(self, token: StoredJoinToken) -> Deferred[None]:
        return self._sql(ids.add_join_token, token)

    def revoke_join_token(self, token_id: str) -> Deferred[bool]:
        return self._sql(ids.revoke_join_token, token_id)

    def identities(self) -> Deferred[list[StoredIdentity]]:
        return self._sql(ids.identities)

    def identity(self, name: str) -> Deferred[StoredIdentity | None]:
        return self._sql(ids.identity, name)

    def put_identity(self, identity: StoredIdentity) -> Deferred[bool]:
        def put(cursor: Any, mark: str) -> bool:
            kept = ids.put_identity(cursor, mark, identity, self._lock)
            if kept:
                self._identity_changed(cursor, identity.name)
            return kept

        return self._sql(put)

    def join(
        self, token_id: str, digest: str, check: Callable[[dict[str, Any]], Refusal | None],
        new: Callable[[dict[str, Any]], StoredIdentity],
    ) -> Deferred[StoredIdentity | Refusal]:
        def join(cursor: Any, mark: str) -> StoredIdentity | Refusal:
            outcome = ids.join(cursor, mark, self._lock, token_id, digest, check, new)
            if isinstance(outcome, StoredIdentity):
                self._identity_changed(cursor, outcome.name)
            return outcome

        return self._sql(join)

    def set_identity_state(
        self, name: str, state: str, allowed: tuple[str, ...], note: dict[str, Any]
    ) -> Deferred[StoredIdentity | None]:
        def move(cursor: Any, mark: str) -> StoredIdentity | None:
            moved = ids.set_state(cursor, mark, self._lock, name, state, allowed, note)
            if moved is not None:
                self._identity_changed(cursor, name)
            return moved

        return self._sql(move)

    def ping(self) -> Deferred[None]:
        return self._run(self._ping)


