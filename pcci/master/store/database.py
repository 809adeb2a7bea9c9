"""
The store's connection to its database, used from one thread of its own:
what both engines share (see L{pcci.master.store.sqlite} and
L{pcci.master.store.postgres}).  The table modules hand it their work.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from pcci.master.store.dialect import Dialect

T = TypeVar("T")

#: C{work(cursor, dialect, *args)}: the statements of one call, run in one transaction.
Work = Callable[..., T]


class Database:
    """
    One connection, whose calls run in one thread of its own in the order
    they were made (a read sees every write asked before it).  Nothing is
    started until L{open}: a daemon forks after it is built, and a thread
    started before the fork is not in the daemon.

    An engine provides L{connect}, L{transact} and L{disconnect}.
    """

    dialect: Dialect

    def __init__(self, reactor: Any, thread_name: str) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(1, 1, name=thread_name)

    def open(self) -> None:
        """
        Connect, make or check the schema, and start the thread.

        @raise StoreError: the database cannot be used.
        """
        self.connect()
        self._pool.start()

    def run(self, work: Work[T], *args: Any) -> Deferred[T]:
        """C{work(cursor, dialect, *args)} in one transaction, in the store's thread."""
        return deferToThreadPool(self._reactor, self._pool, self.transact, work, *args)

    def close(self) -> None:
        self._pool.stop()
        self.disconnect()

    def ping(self) -> Deferred[None]:
        """Fails when the database cannot be used now (its server gone)."""
        return self.run(_ping)

    # In the store's thread (or, at open, before it starts).

    def connect(self) -> None:
        raise NotImplementedError

    def transact(self, work: Work[T], *args: Any) -> T:
        raise NotImplementedError

    def disconnect(self) -> None:
        raise NotImplementedError


def _ping(cursor: Any, dialect: Dialect) -> None:
    cursor.execute("SELECT 1")
    cursor.fetchone()
