"""
A pool's live events, and the server-sent event stream that carries them.

Every event of a pool has an id, 1, 2, 3... in the order the master saw
it: a job C{started}, its C{output}, C{ended}, and last the C{pool} itself.
The master keeps no separate log of them: they are read back from the
jobs, whose output is capped, so a replay holds exactly what the master
still holds, with a C{dropped} event where output was dropped.

An L{EventStream} writes events as they come while its reader keeps up.
When the reader falls behind, the transport pauses it and it keeps only
its place (the last id written); once resumed it catches up from the
jobs.  A slow or stalled reader therefore costs one transport buffer, not
a copy of the output.
"""

from __future__ import annotations

import heapq
import json
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.iweb import IRequest
from zope.interface import implementer

from pcci.output import Chunk

if TYPE_CHECKING:
    from pcci.master.state import Job, Pool

#: Seconds between comment lines on an idle stream, so proxies keep it open.
KEEP_ALIVE = 15.0


class Event(NamedTuple):
    """One event of a pool."""

    id: int
    name: str
    data: dict[str, Any]


def job_events(job: Job, after: int) -> Iterator[Event]:
    """A job's events with ids above C{after}, from what the master holds."""
    if job.started_event > after:
        yield Event(job.started_event, "started", job.started_data())
    for piece in job.output.chunks(after):
        if isinstance(piece, Chunk):
            yield Event(piece.event, "output", output_data(job, piece.text, piece.stream))
        else:
            yield Event(
                piece.event, "dropped", {"worker": job.worker_id, "bytes": piece.size}
            )
    if job.ended_event > after:
        yield Event(job.ended_event, "ended", job.ended_data())


def output_data(job: Job, text: str, stream: str) -> dict[str, Any]:
    return {"worker": job.worker_id, "stream": stream, "data": text}


def pool_events(pool: Pool, after: int = 0) -> Iterator[Event]:
    """Every job event of C{pool} above C{after}, in id order."""
    return heapq.merge(
        *(job_events(job, after) for job in pool.jobs.values()), key=lambda e: e.id
    )


def frame(event_id: int, name: str, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, name.encode(), data)


def encode(event: Event) -> bytes:
    # JSON escapes every line break a stream could split on (CR and LF).
    data = json.dumps(event.data, ensure_ascii=False).encode("utf-8")
    return frame(event.id, event.name, data)


@implementer(IPushProducer)
class EventStream:
    """
    Writes a pool's events after C{after} to C{request} as
    C{text/event-stream}, then the C{pool} event once it has ended, then
    closes.  C{pool_pieces} gives the pool's JSON in pieces.
    """

    def __init__(
        self,
        request: IRequest,
        pool: Pool,
        after: int,
        clock: IReactorTime,
        pool_pieces: Callable[[Pool], Iterator[bytes]],
        keep_alive: float = KEEP_ALIVE,
    ) -> None:
        self.request = request
        self.pool = pool
        #: The id of the last event written.
        self.cursor = after
        self.clock = clock
        self.keep_alive = keep_alive
        self.paused = False
        self._pool_pieces = pool_pieces
        self._tail: Iterator[bytes] | None = None
        self._keep_alive_call: IDelayedCall | None = None
        self.done: Deferred[bytes] = Deferred(lambda d: self.stopProducing())

    def start(self) -> Deferred[bytes]:
        """Begin; fires with C{b""} once the stream is over (for Klein to finish)."""
        self.request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        self.request.setHeader(b"Cache-Control", b"no-cache")
        self.request.setHeader(b"X-Accel-Buffering", b"no")
        self.request.registerProducer(self, True)
        # A comment first: the client gets the headers before any event.
        self._write(b": events of pool %s\n\n" % self.pool.id.encode())
        self.pool.listeners.append(self._heard)
        self._arm_keep_alive()
        self._catch_up()
        return self.done

    def _heard(self, event: Event) -> None:
        """A new event of the pool: write it now if the reader keeps up."""
        if self.paused or self.done.called:
            return
        if event.id == self.cursor + 1 and event.name != "pool":
            self._write(encode(event))
            self.cursor = event.id
        else:
            self._catch_up()

    def _catch_up(self) -> None:
        for event in pool_events(self.pool, self.cursor):
            self._write(encode(event))
            self.cursor = event.id
            if self.paused:
                return
        if self.pool.finished:
            self._tail = self._pool_tail()
            self._write_tail()

    def _pool_tail(self) -> Iterator[bytes]:
        yield b"id: %d\nevent: pool\ndata: " % self.pool.end_event
        yield from self._pool_pieces(self.pool)
        yield b"\n\n"

    def _write_tail(self) -> None:
        assert self._tail is not None
        while not self.paused and not self.done.called:
            piece = next(self._tail, None)
            if piece is None:
                self._finish()
                return
            self._write(piece)

    def _write(self, data: bytes) -> None:
        self.request.write(data)
        self._arm_keep_alive()

    def _arm_keep_alive(self) -> None:
        if self._keep_alive_call is not None and self._keep_alive_call.active():
            self._keep_alive_call.reset(self.keep_alive)
        else:
            self._keep_alive_call = self.clock.callLater(self.keep_alive, self._ping)

    def _ping(self) -> None:
        self._keep_alive_call = None
        if self.done.called:
            return
        if not self.paused and self._tail is None:
            self._write(b": keep-alive\n\n")
        else:
            self._arm_keep_alive()

    # IPushProducer

    def resumeProducing(self) -> None:
        self.paused = False
        if self._tail is not None:
            self._write_tail()
        elif not self.done.called:
            self._catch_up()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.done.called:
            return
        if self._heard in self.pool.listeners:
            self.pool.listeners.remove(self._heard)
        if self._keep_alive_call is not None and self._keep_alive_call.active():
            self._keep_alive_call.cancel()
        self.request.unregisterProducer()
        self.done.callback(b"")
