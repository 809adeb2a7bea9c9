"""
The pools' history: the pools in memory, the store that keeps them all,
and the budget of output memory holds.

Memory holds every running pool and, with a store, the latest C{cache}
finished ones; the store holds them all for C{retention} seconds and
answers for the others.  Without a store (C{--db :memory:} aside, only
tests run so) memory holds finished pools for the retention.  Over the
output budget, finished pools leave memory first (the store keeps them
whole), then the largest running jobs' output is squeezed.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Callable, Protocol, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pcci.master.cluster.model import Job, Pool
from pcci.master.cluster.peering import IPeers
from pcci.master.store.base import PoolQuery, PoolStore
from pcci.master.store.writer import WRITE_DELAY, BatchedWriter
from pcci.output import MIN_SQUEEZED, OutputBuffer

log = Logger()

DEFAULT_RETENTION = 300.0
DEFAULT_MAX_POOLS = 10_000

#: Finished pools kept in memory when a store keeps them all.
DEFAULT_CACHE = 200

#: Seconds between deletions of the store's pools older than the retention.
EXPIRE_INTERVAL = 60.0

#: Seconds between looks at whether the store answers, when nothing is written.
PROBE_INTERVAL = 5.0

#: Seconds more a pool's change waits to be written for each of its jobs
#: (3 s for 10,000): a write makes and stores the whole row, about 30 µs of
#: the master's time a job, so a big pool's writes take a tenth of it at
#: most.  Nothing is lost meanwhile: a worker keeps a job's end until the
#: master has stored it.
WRITE_DELAY_PER_JOB = 0.0003


class TooManyPools(Exception):
    """Every pool kept is still running and there is no room for another."""


class StoreUnavailable(Exception):
    """The store does not answer: a new pool could not be kept."""


class Budgets(Protocol):
    """What bounds the history (the master's L{pcci.master.cluster.state.Settings})."""

    @property
    def retention(self) -> float: ...

    @property
    def max_pools(self) -> int: ...

    @property
    def max_output(self) -> int: ...

    @property
    def max_output_total(self) -> int: ...

    @property
    def cache(self) -> int: ...


class PoolHistory:
    """Pools by id, in memory and in the store, within their budgets."""

    def __init__(
        self,
        clock: IReactorTime,
        wall: Any,
        store: PoolStore | None,
        peers: IPeers,
        budgets: Budgets,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.store = store
        self.peers = peers
        self.writer = None if store is None else BatchedWriter(store, clock)
        self.budgets = budgets
        #: Pools in memory by id, oldest first.
        self.pools: dict[str, Pool] = {}
        #: Bytes of output held in memory, over every job.
        self.output_total = 0
        #: Finished pools whose output is still held, in the order they ended.
        self._held: deque[Pool] = deque()
        #: Running pools of other masters on the same store, shown here
        #: (see L{pcci.master.peers.peers}).
        self.elsewhere: dict[str, Pool] = {}
        self._expiries: dict[str, IDelayedCall] = {}
        self._expirer: IDelayedCall | None = None
        self._prober: IDelayedCall | None = None

    def start(self) -> None:
        """Delete the stored pools past the retention now and then; watch the store."""
        if self.store is not None and self._expirer is None:
            self._expirer = self.clock.callLater(EXPIRE_INTERVAL, self._expire_stored)
            self._prober = self.clock.callLater(PROBE_INTERVAL, self._probe)

    def _probe(self) -> None:
        assert self.writer is not None
        self._prober = self.clock.callLater(PROBE_INTERVAL, self._probe)
        self.writer.probe()

    def check_store(self) -> None:
        """
        @raise StoreUnavailable: the store failed its last write or look, so
            a new pool could not be kept.
        """
        if self.writer is not None and self.writer.failing:
            raise StoreUnavailable(f"the store does not answer ({self.writer.trouble})")

    def stop(self) -> None:
        """Cancel every timer: the master is shutting down."""
        if self.writer is not None:
            self.writer.stop()
        for call in (*self._expiries.values(), self._expirer, self._prober):
            if call is not None and call.active():
                call.cancel()
        self._expiries.clear()
        self._expirer = self._prober = None

    # Pools coming and going

    def new_output(self, record: dict[str, Any] | None = None) -> OutputBuffer:
        """A job's output buffer, counted in the budget (from its record, if stored)."""
        if record is None:
            return OutputBuffer(self.budgets.max_output, self._resized)
        return OutputBuffer.from_record(record, self.budgets.max_output, self._resized)

    def read_only_output(self, record: dict[str, Any] | None) -> OutputBuffer:
        """A job's output as stored, for a pool only read (outside the budget)."""
        if record is None:
            return OutputBuffer(self.budgets.max_output)
        return OutputBuffer.from_record(record, self.budgets.max_output)

    def add(self, pool: Pool) -> None:
        """Keep a new pool, written to the store soon."""
        self.pools[pool.id] = pool
        self.changed(pool)

    def make_room(self) -> None:
        """
        Let the oldest finished pool go if a new one would exceed C{max_pools}.

        @raise TooManyPools: every pool in memory is running.
        """
        if len(self.pools) < self.budgets.max_pools:
            return
        if self.store is not None:
            # The store keeps history: memory only bounds what runs.
            for pool in list(self._held):
                if len(self.pools) < self.budgets.max_pools:
                    return
                self._held.remove(pool)
                self._let_go(pool)
            if sum(1 for pool in self.pools.values() if not pool.finished) < self.budgets.max_pools:
                return
            raise TooManyPools(f"{self.budgets.max_pools} pools are running, the most kept")
        for pool in self.pools.values():
            if pool.finished:
                self._expiries.pop(pool.id).cancel()
                self._drop(pool.id)
                return
        raise TooManyPools(f"{len(self.pools)} pools are running, the most kept")

    def ended(self, pool: Pool) -> None:
        """A pool finished: it is kept for the retention, in memory for a while."""
        self._expiries[pool.id] = self.clock.callLater(self.budgets.retention, self._expire, pool.id)
        self._held.append(pool)

    def trim(self) -> None:
        """Let the finished pools past the cache go (the store keeps them)."""
        if self.store is not None:
            while len(self._held) > self.budgets.cache:
                self._let_go(self._held.popleft())

    def load(self, records: list[dict[str, Any]]) -> list[Pool]:
        """Take back the pools that had not ended when the last master stopped."""
        pools = [Pool.from_record(record, self.new_output) for record in records]
        for pool in pools:
            self.pools[pool.id] = pool
        return pools

    def _expire(self, pool_id: str) -> None:
        del self._expiries[pool_id]
        self._drop(pool_id)

    def _drop(self, pool_id: str) -> None:
        pool = self.pools.pop(pool_id)
        for job in pool.jobs.values():
            job.output.release()

    # The store

    def changed(self, pool: Pool) -> None:
        """
        C{pool} changed: the store gets it with the next write.  A pool's
        row holds all its jobs, so while it runs a big pool's waits longer,
        gathering more of its changes; once ended, it goes at once.
        """
        if self.writer is not None:
            running = len(pool.jobs) * WRITE_DELAY_PER_JOB if not pool.finished else 0.0
            self.writer.mark(pool.id, pool.snapshot, max(WRITE_DELAY, running))

    def stored(self, pool_id: str, hurry: bool = True) -> Deferred[None]:
        """
        Fires once the store holds the pool as it is now (at once without a
        store, or when nothing of it waits); in a C{hurry}, written next turn.
        """
        if self.writer is None:
            return succeed(None)
        return self.writer.committed(pool_id, hurry)

    def flush(self) -> Deferred[None]:
        """Write what waits; fires when written (at once without a store)."""
        return succeed(None) if self.writer is None else self.writer.flush()

    def _let_go(self, pool: Pool) -> None:
        """A finished pool leaves memory once the store holds it."""
        assert self.writer is not None

        def gone(_: Any) -> None:
            if self.pools.get(pool.id) is pool and not pool.listeners and not pool.waiters:
                call = self._expiries.pop(pool.id, None)
                if call is not None and call.active():
                    call.cancel()
                del self.pools[pool.id]
                for job in pool.jobs.values():
                    job.output.detach()  # an answer being written may still read it

        self.writer.committed(pool.id, hurry=False).addCallback(gone)

    def _expire_stored(self) -> None:
        assert self.store is not None
        self._expirer = self.clock.callLater(EXPIRE_INTERVAL, self._expire_stored)
        def deleted(count: int) -> None:
            if count:
                log.info("deleted {count} pools past the retention", count=count)

        d = self.store.pools.expire(self.wall() - self.budgets.retention).addCallback(deleted)
        d.addErrback(lambda f: log.error("cannot delete old pools: {why}", why=f.getErrorMessage()))

    # Reading

    def list_pools(self, query: PoolQuery = PoolQuery()) -> Iterator[Pool]:
        """Pools in memory newest first, those the C{query} asks for."""
        return (pool for pool in reversed(self.pools.values()) if query.matches(pool))

    def find(self, pool_id: str) -> Deferred[Pool | None]:
        """A pool by id: from memory, else from the store (kept in memory a while)."""
        pool = self.pools.get(pool_id) or self.elsewhere.get(pool_id)
        if pool is not None or self.store is None:
            return succeed(pool)

        def loaded(record: dict[str, Any] | None) -> Pool | Deferred[Pool | None] | None:
            if record is None:
                return None
            if pool_id in self.pools:  # loaded meanwhile
                return self.pools[pool_id]
            if record["ended_at"] is None:
                # Another master runs it (on the same store): shown live, or
                # as last written there; not kept here (see is_elsewhere).
                live = self.peers.replica(record)
                if live is not None:
                    # Deferred is typed invariant: a Pool is a Pool or None.
                    return cast("Deferred[Pool | None]", live)
                return Pool.from_record(record, self.read_only_output)
            if record["ended_at"] < self.wall() - self.budgets.retention:
                return None  # past the retention, not yet deleted
            found = Pool.from_record(record, self.new_output)
            while self._held and len(self._held) >= self.budgets.cache:
                self._let_go(self._held.popleft())
            self.pools[pool_id] = found
            self._held.append(found)
            return found

        found: Deferred[Pool | None] = self.store.pools.get(pool_id).addCallback(loaded)
        return found

    def is_elsewhere(self, pool: Pool) -> bool:
        """Whether C{pool} is another master's, read from the store: this one cannot act on it."""
        return self.pools.get(pool.id) is not pool

    def unfinished_job(self, pool_id: str, worker: str) -> Deferred[Job | str | None]:
        """
        The job of C{worker} in pool C{pool_id} if it has not ended: from
        memory, else from the store (a pool a master that stopped started),
        whose pool is then kept in memory like one this master started.
        The name of the master that runs the pool, if another does.
        """
        pool = self.pools.get(pool_id)
        if pool is not None or self.store is None:
            return succeed(_unended(pool, worker))

        def loaded(record: dict[str, Any] | str | None) -> Job | str | None:
            if pool_id in self.pools:  # loaded meanwhile
                return _unended(self.pools[pool_id], worker)
            if record is None or isinstance(record, str):
                return record
            # This master's now: kept like one it started (its output counts
            # in the budget).
            found = self.pools[pool_id] = Pool.from_record(record, self.new_output)
            job = _unended(found, worker)
            return job if job is not None and job.sent else None

        return self.store.pools.claim(pool_id).addCallback(loaded)

    def page(self, query: PoolQuery, limit: int) -> Deferred[list[Pool | dict[str, Any]]]:
        """
        C{limit} pools newest first, filtered: running and cached pools as
        they are in memory, the others as their stored summaries.
        """
        if self.store is None or self.writer is None:
            return succeed(list(itertools.islice(self.list_pools(query), limit)))
        store = self.store
        d: Deferred[Any] = self.writer.flush()
        since = self.wall() - self.budgets.retention
        d.addCallback(lambda _: store.pools.page(query, limit, since))
        return d.addCallback(
            lambda summaries: [
                self.pools.get(summary["id"]) or self.elsewhere.get(summary["id"], summary)
                for summary in summaries
            ]
        )

    # The total output budget

    def _resized(self, delta: int) -> None:
        self.output_total += delta

    def reclaim_output(self) -> None:
        """
        Called after output was added.  Over the total budget: drop the
        output of finished pools, oldest first, then squeeze the largest
        running jobs' output, until the master holds at most nine tenths of
        the budget.
        """
        if self.output_total <= self.budgets.max_output_total:
            return
        goal = self.budgets.max_output_total * 9 // 10
        freeing = 0  # bytes of pools let go, given back once the store has them
        while self.output_total - freeing > goal and self._held:
            pool = self._held.popleft()
            if self.pools.get(pool.id) is not pool:
                continue
            if self.writer is not None:
                freeing += sum(job.output.size for job in pool.jobs.values())
                self._let_go(pool)  # the store keeps it whole
            else:
                for job in pool.jobs.values():
                    job.output.release()
        if self.output_total - freeing <= goal:
            return
        running = (job for pool in self.pools.values() for job in pool.jobs.values() if job.status is None)
        _squeeze(running, lambda: self.output_total > goal)
        log.warn(
            "output over the {budget}-byte budget: older output dropped",
            budget=self.budgets.max_output_total,
        )


def _squeeze(jobs: Iterable[Job], over: Callable[[], bool]) -> None:
    """Halve the largest jobs' output, largest first (to L{MIN_SQUEEZED} at least), while C{over()}."""
    for job in sorted(jobs, key=lambda job: job.output.size, reverse=True):
        if not over() or job.output.size <= MIN_SQUEEZED:
            break
        job.output.shrink(max(MIN_SQUEEZED, job.output.size // 2))


def _unended(pool: Pool | None, worker: str) -> Job | None:
    job = None if pool is None else pool.jobs.get(worker)
    return job if job is not None and job.status is None else None

