"""
The health figures the master keeps of each worker: the latest, cleaned,
and a bounded history of them.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

from pcci.wire import FIGURES


def clean_figures(raw: dict[str, Any]) -> dict[str, float | None]:
    """A worker's figures as the master keeps them: known names, numbers or None."""
    figures: dict[str, float | None] = {}
    for name in FIGURES:
        value = raw.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            figures[name] = float(value)
        else:
            figures[name] = None
    return figures


class HealthHistory:
    """
    The last C{size} heartbeats of one worker, in a ring of doubles (None
    stored as NaN) that grows as it fills: 200 workers' hour at one-second
    resolution fits in about 60 MiB, and a worker seen once costs a row.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._width = len(FIGURES) + 1  # the time, then the figures
        self._rows = array("d")
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, when: float, figures: dict[str, float | None]) -> None:
        row = [when]
        for name in FIGURES:
            value = figures.get(name)
            row.append(math.nan if value is None else value)
        if self._count < self.size:
            self._rows.extend(row)
            self._count += 1
            self._next = self._count % self.size
            return
        start = self._next * self._width
        self._rows[start : start + self._width] = array("d", row)
        self._next = (self._next + 1) % self.size

    def columns(self) -> dict[str, list[float | None]]:
        """The history oldest first, one list per figure plus C{time}."""
        first = self._next if self._count == self.size else 0
        order = [(first + i) % self._count for i in range(self._count)]
        result: dict[str, list[float | None]] = {}
        for offset, name in enumerate(("time", *FIGURES)):
            column = [self._rows[row * self._width + offset] for row in order]
            result[name] = [None if math.isnan(v) else v for v in column]
        return result
