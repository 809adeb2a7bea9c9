"""Pool ids: UUIDv7 strings, unique and time-ordered even within a millisecond."""

from __future__ import annotations

import os
import time
import uuid
from typing import Callable


class UUID7Generator:
    """
    Make RFC 9562 version 7 UUIDs that sort in creation order.

    The 12 bits after the millisecond timestamp are a counter (the RFC's
    "method 1"), so ids made in one millisecond still sort in order; when it
    overflows, or the clock steps back, the timestamp is carried forward.
    """

    def __init__(self, now_ms: Callable[[], int] | None = None) -> None:
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = -1
        self._counter = 0

    def __call__(self) -> str:
        ms = self._now_ms()
        if ms > self._last_ms:
            self._last_ms = ms
            self._counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            self._counter += 1
            if self._counter > 0xFFF:
                self._last_ms += 1
                self._counter = 0
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (
            (self._last_ms & ((1 << 48) - 1)) << 80
            | 0x7 << 76
            | self._counter << 64
            | 0b10 << 62
            | rand_b
        )
        return str(uuid.UUID(int=value))
