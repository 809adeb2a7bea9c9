"""
A shell's recording, in asciicast v2 (asciinema's format): a header line,
then a JSON line an event, C{[seconds, "o", text]} for output and
C{[seconds, "r", "COLSxROWS"]} for a resize.  Output only: what the user
types is not kept (it may be a password the terminal does not echo).

It goes to the store in pieces (every L{PIECE} bytes, or every
L{FLUSH_EVERY} seconds), so a long session costs the master no memory; past
its cap, one last line says the recording stopped there.
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pcci.master.store.base import ShellTable

log = Logger()

#: Bytes of a recording kept per shell, by default (C{--shell-record-max}).
DEFAULT_RECORD_MAX = 16 * 1024 * 1024

#: Bytes gathered before a piece goes to the store, and seconds at most.
PIECE = 64 * 1024
FLUSH_EVERY = 1.0


class Recording:
    """One shell's asciicast, written to its store as it grows."""

    def __init__(
        self, clock: IReactorTime, table: ShellTable, shell_id: str, cap: int, header: dict[str, Any]
    ) -> None:
        self._clock = clock
        self._table = table
        self._id = shell_id
        self._cap = cap
        self._start = clock.seconds()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pieces: list[bytes] = []
        self._gathered = 0
        self._seq = 0
        self._flush_call: IDelayedCall | None = None
        self._failed = False
        #: Bytes recorded so far, and whether the cap cut it short.
        self.size = 0
        self.truncated = False
        self._write({"version": 2, **header})

    def output(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._event("o", text)

    def resize(self, rows: int, cols: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def close(self) -> None:
        """The shell ended: what is gathered goes to the store."""
        rest = self._decoder.decode(b"", final=True)
        if rest:
            self._event("o", rest)
        self._flush()

    def _event(self, kind: str, text: str) -> None:
        if self.truncated:
            return
        at = round(self._clock.seconds() - self._start, 6)
        line = _line([at, kind, text])
        room = self._cap - self.size
        if len(line) > room:
            # What fits of the last output is kept, then a line says where it stopped.
            if kind == "o":
                fits, longer = 0, len(text)
                while fits < longer:
                    middle = (fits + longer + 1) // 2
                    if len(_line([at, kind, text[:middle]])) <= room:
                        fits = middle
                    else:
                        longer = middle - 1
                if fits:
                    self._add(_line([at, kind, text[:fits]]))
            self.truncated = True
            self._add(_line([at, "o", f"\r\n[pcci: the recording stops here, at its cap of {self._cap} bytes]\r\n"]))
            self._flush()
            return
        self._add(line)

    def _write(self, value: Any) -> None:
        self._add(_line(value))

    def _add(self, line: bytes) -> None:
        self._pieces.append(line)
        self._gathered += len(line)
        self.size += len(line)
        if self._gathered >= PIECE:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = self._clock.callLater(FLUSH_EVERY, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if not self._pieces:
            return
        data, self._pieces, self._gathered = b"".join(self._pieces), [], 0
        self._table.record(self._id, self._seq, data).addErrback(self._not_stored)
        self._seq += 1

    def _not_stored(self, failure: Any) -> None:
        if not self._failed:  # once a shell: the store's own errors say more
            self._failed = True
            log.warn("shell {id}: part of its recording was not stored: {why}", id=self._id,
                     why=failure.getErrorMessage())


def _line(value: Any) -> bytes:
    return (json.dumps(value, ensure_ascii=False) + "\n").encode("utf-8")
