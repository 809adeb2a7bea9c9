"""
Large JSON answers written in pieces, at the pace the client reads them.

Serialising a page of pools with megabytes of output each in one go would
stall the reactor and hold the whole answer in memory per reader.  A
L{JSONStream} is a producer paused by the transport while its buffer is
full, so a slow or stalled reader costs about one piece of memory, and the
reactor serialises a piece at a time between its other work.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Iterable, Iterator

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.iweb import IRequest
from twisted.logger import Logger
from zope.interface import implementer

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
        self.request = request
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
