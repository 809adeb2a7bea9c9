"""
Batched writes of changed pools: every change made while the last write
ran goes in one transaction, and a failed write is tried again.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from pcci.master.store.base import PoolStore, StoredPool

log = Logger()

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
        d = self.store.pools.save(rows)
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
