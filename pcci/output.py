"""
Jobs' output as the master and the worker keep it: per job, capped with its
beginning and end kept, and reported to a budget (the master's, over all
jobs, bounds its memory).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Callable, NamedTuple

#: Output kept per job, by default.
DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024

#: Output kept over all jobs in memory, by default.
DEFAULT_MAX_OUTPUT_TOTAL = 512 * 1024 * 1024

#: A running job's output is never squeezed below this by the total budget.
MIN_SQUEEZED = 64 * 1024


class Chunk(NamedTuple):
    """A piece of output, as it arrived."""

    text: str
    size: int  # bytes of UTF-8
    stream: str  # "stdout" or "stderr"
    #: Its event id within the pool (see L{pcci.master.cluster.events}).
    event: int = 0


class Dropped(NamedTuple):
    """Where output was dropped, and how many bytes."""

    size: int
    #: The event id of the first piece dropped.
    event: int
    #: The event id just before the first piece kept after them (the last
    #: one dropped whole), or None when nothing is kept after them.
    last: int | None = None


def _first_above(chunks: Sequence[Chunk], event: int) -> int:
    """The index of the first of C{chunks} (in event order) whose event id is above C{event}."""
    # bisect's key= is Python 3.10+: the worker runs on 3.9.
    low, high = 0, len(chunks)
    while low < high:
        middle = (low + high) // 2
        if chunks[middle].event <= event:
            low = middle + 1
        else:
            high = middle
    return low


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def on_own_line(note: str, before: str) -> str:
    """
    A note of pcci's (C{"pcci: timed out..."}) to add after the output
    C{before}: on a line of its own, with a newline first only when that
    output stopped mid-line.
    """
    return note if not before or before.endswith("\n") else "\n" + note


class OutputBuffer:
    """
    A job's output, capped at C{limit} bytes of UTF-8.

    Past the cap it keeps the beginning (up to half the cap) and the end,
    and counts what was dropped between them, so both how a command started
    and how it ended stay visible.  C{on_resize} hears every change of the
    bytes held, for the master's total budget.
    """

    def __init__(
        self, limit: int, on_resize: Callable[[int], None] = lambda delta: None
    ) -> None:
        self.limit = limit
        self._on_resize = on_resize
        self._head: list[Chunk] = []
        self._head_size = 0
        self._tail: deque[Chunk] = deque()
        self._tail_size = 0
        self.dropped = 0
        self._dropped_event: int | None = None

    @property
    def size(self) -> int:
        """Bytes of output held."""
        return self._head_size + self._tail_size

    def append(self, text: str, stream: str = "stdout", event: int = 0) -> None:
        before = self.size
        chunk = Chunk(text, utf8_size(text), stream, event)
        if (
            not self._tail
            and not self.dropped
            and self._head_size + chunk.size <= self.limit // 2
        ):
            self._head.append(chunk)
            self._head_size += chunk.size
        else:
            self._tail.append(chunk)
            self._tail_size += chunk.size
            self._trim_tail()
        self._on_resize(self.size - before)

    def shrink(self, limit: int) -> None:
        """Hold at most C{limit} bytes from now on, dropping from the middle."""
        if limit >= self.limit:
            return
        before = self.size
        self.limit = limit
        while self._head_size > limit // 2:
            last = self._head.pop()
            self._head_size -= last.size
            self._tail.appendleft(last)
            self._tail_size += last.size
        self._trim_tail()
        self._on_resize(self.size - before)

    def _trim_tail(self) -> None:
        tail_limit = self.limit - self._head_size
        while self._tail_size > tail_limit:
            oldest = self._tail.popleft()
            excess = self._tail_size - tail_limit
            self._tail_size -= oldest.size
            self._note_drop(oldest.event)
            if excess >= oldest.size:
                self.dropped += oldest.size
                continue
            # Keep the end of the oldest piece; drop a cut character whole.
            kept = oldest.text.encode("utf-8")[excess:].decode("utf-8", "ignore")
            kept_size = utf8_size(kept)
            self.dropped += oldest.size - kept_size
            self._tail.appendleft(Chunk(kept, kept_size, oldest.stream, oldest.event))
            self._tail_size += kept_size

    def _note_drop(self, event: int) -> None:
        if self._dropped_event is None or event < self._dropped_event:
            self._dropped_event = event

    def release(self) -> None:
        """Give the bytes back to the budget: this output is forgotten."""
        for chunk in itertools.islice(itertools.chain(self._head, self._tail), 1):
            self._note_drop(chunk.event)
        self._on_resize(-self.size)
        self.dropped += self.size
        self._head, self._tail = [], deque()
        self._head_size = self._tail_size = 0

    def detach(self) -> None:
        """No longer counted in the budget: kept only by whoever still reads it."""
        self._on_resize(-self.size)
        self._on_resize = lambda delta: None

    @property
    def last_text(self) -> str:
        """The latest piece of output held ("" when none, or it was dropped)."""
        if self._tail:
            return self._tail[-1].text
        if self._head and not self.dropped:
            return self._head[-1].text
        return ""

    def marker(self) -> str:
        return f"\n[pcci: {self.dropped} bytes of output dropped]\n"

    def chunks(self, after: int = -1, whole: bool = False) -> Iterator[Chunk | Dropped]:
        """
        The chunks kept in order, with what was dropped between them; with
        C{after}, only those whose event id is above it.  C{whole} (a
        worker's replay, whose reader must get every number above C{after})
        gives what was dropped also when C{after} falls within it.
        """
        yield from itertools.islice(self._head, _first_above(self._head, after), None)
        if self.dropped:
            first = self._dropped_event or 0
            last = self._tail[0].event - 1 if self._tail else None
            if first > after or (whole and (last is None or last > after)):
                yield Dropped(self.dropped, first, last)
        yield from itertools.islice(self._tail, _first_above(self._tail, after), None)

    def text(self) -> str:
        marker = self.marker() if self.dropped else ""
        return (
            "".join(c.text for c in self._head)
            + marker
            + "".join(c.text for c in self._tail)
        )

    # As stored (see pcci.master.store.sqlite)

    def to_record(self) -> dict[str, object]:
        return {
            "head": [[c.event, c.stream, c.text] for c in self._head],
            "dropped": self.dropped,
            "dropped_event": self._dropped_event,
            "tail": [[c.event, c.stream, c.text] for c in self._tail],
        }

    @classmethod
    def from_record(
        cls,
        record: dict,
        limit: int,
        on_resize: Callable[[int], None] = lambda delta: None,
    ) -> OutputBuffer:
        buffer = cls(max(limit, 1), on_resize)
        for event, stream, text in record.get("head", []):
            buffer._head.append(Chunk(text, utf8_size(text), stream, event))
        for event, stream, text in record.get("tail", []):
            buffer._tail.append(Chunk(text, utf8_size(text), stream, event))
        buffer._head_size = sum(c.size for c in buffer._head)
        buffer._tail_size = sum(c.size for c in buffer._tail)
        buffer.dropped = record.get("dropped", 0)
        buffer._dropped_event = record.get("dropped_event")
        on_resize(buffer.size)
        return buffer
