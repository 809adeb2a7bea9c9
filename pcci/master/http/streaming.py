"""
Answers written at the pace the client reads them: large JSON in pieces
(L{JSONStream}) and a pool's live events (L{EventStream}).

Serialising a page of pools with megabytes of output each in one go would
stall the reactor and hold the whole answer in memory per reader.  A
L{JSONStream} is a producer paused by the transport while its buffer is
full, so a slow or stalled reader costs about one piece of memory, and the
reactor serialises a piece at a time between its other work.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.http import Request
from twisted.web.iweb import IRequest
from zope.interface import implementer

from pcci.master.cluster.events import Event, pool_events

if TYPE_CHECKING:
    from pcci.master.cluster.model import Pool

log = Logger()

#: Bytes of small pieces gathered into one write.
WRITE_SIZE = 64 * 1024

#: Characters of a long string (a job's output) encoded in one piece.
STRING_PIECE = 64 * 1024


def json_list_pieces(items: Iterable[Iterator[bytes]]) -> Iterator[bytes]:
    """A JSON list of items, each given as its own pieces, made lazily."""
    yield b"["
    first = True
    for item in items:
        if not first:
            yield b","
        yield from item
        first = False
    yield b"]"


def json_object_pieces(
    head: dict[str, Any], key: str, items: Iterable[Any]
) -> Iterator[bytes]:
    """
    A JSON object: C{head}'s fields, then C{key} holding a list of
    C{items} encoded one a piece.
    """
    text = json.dumps(head).encode("utf-8")
    yield text[:-1] + (b", " if head else b"") + json.dumps(key).encode() + b": ["
    first = True
    for item in items:
        if not first:
            yield b","
        yield from object_pieces(item)
        first = False
    yield b"]}"


def object_pieces(value: dict[str, Any]) -> Iterator[bytes]:
    """
    C{json.dumps(value)} in pieces, a long string value (megabytes of a
    job's output) cut into several: the reactor encodes a piece at a time.
    """
    if not any(isinstance(item, str) and len(item) > STRING_PIECE for item in value.values()):
        yield json.dumps(value).encode()  # the usual case: one piece
        return
    pending = [b"{"]
    for index, (key, item) in enumerate(value.items()):
        pending.append(b"%s%s: " % (b", " if index else b"", json.dumps(key).encode()))
        if isinstance(item, str) and len(item) > STRING_PIECE:
            pending.append(b'"')
            yield b"".join(pending)
            for start in range(0, len(item), STRING_PIECE):
                # Escaping is by character: the pieces of a string join up.
                yield json.dumps(item[start : start + STRING_PIECE])[1:-1].encode()
            pending = [b'"']
        else:
            pending.append(json.dumps(item).encode())
    pending.append(b"}")
    yield b"".join(pending)


@implementer(IPushProducer)
class JSONStream:
    """
    Writes C{pieces} to C{request} while the transport takes them: the
    transport pauses this producer once its buffer is full (one write of
    L{WRITE_SIZE} and a piece past 64 KiB at most) and resumes it when the
    client has read it.

    A piece may also be a Deferred of more pieces (a pool read from the
    store): the stream waits for it, then writes those first.
    """

    def __init__(self, request: IRequest, pieces: Iterator[Any]) -> None:
        # Klein hands a twisted.web Request: IRequest lacks its producer API.
        self.request = cast(Request, request)
        self.pieces = pieces
        self.paused = False
        self._loading = False
        self.done: Deferred[bytes] = Deferred(lambda d: self.stopProducing())

    def start(self) -> Deferred[bytes]:
        """Begin; fires with C{b""} once everything is written (for Klein to finish)."""
        self.request.setHeader(b"Content-Type", b"application/json")
        self.request.registerProducer(self, True)
        self.resumeProducing()
        return self.done

    def resumeProducing(self) -> None:
        self.paused = False
        self._write()

    def _write(self) -> None:
        # Small pieces go out together, in writes of about WRITE_SIZE: a
        # short answer is one write.
        batch: list[bytes] = []
        size = 0
        while not self.paused and not self._loading and not self.done.called:
            piece = next(self.pieces, None)
            if piece is None:
                batch.append(b"\n")
                self.request.write(b"".join(batch))
                self._finish()
                return
            if isinstance(piece, Deferred):
                self._loading = True
                piece.addCallback(self._loaded).addErrback(self._failed)
                break
            batch.append(piece)
            size += len(piece)
            if size >= WRITE_SIZE:
                self.request.write(b"".join(batch))  # may pause this producer
                batch, size = [], 0
        if batch:
            self.request.write(b"".join(batch))

    def _loaded(self, more: Iterator[bytes]) -> None:
        self._loading = False
        self.pieces = itertools.chain(more, self.pieces)
        self._write()

    def _failed(self, failure: Any) -> None:
        log.failure("cannot read a pool for an answer", failure)
        self.request.loseConnection()  # the answer cannot be completed
        self._finish()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.pieces = iter(())
        self._finish()

    def _finish(self) -> None:
        if self.done.called:
            return
        self.request.unregisterProducer()
        self.done.callback(b"")


#: Seconds between comment lines on an idle stream, so proxies keep it open.
KEEP_ALIVE = 15.0


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
        # Klein hands a twisted.web Request: IRequest lacks its producer API.
        self.request = cast(Request, request)
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
