"""
Node health: the figures a worker measures with psutil for its heartbeats,
and the bounded history the master keeps of them.
"""

from __future__ import annotations

import math
import os
import time
from array import array
from typing import Any

import psutil

#: The figures of a heartbeat, in base units, in this order everywhere.
FIGURES = (
    "cpu_ratio",  # 0..1, all cores, since the previous heartbeat
    "load_1m",
    "load_5m",
    "load_15m",
    "memory_used_bytes",
    "memory_total_bytes",
    "disk_used_bytes",
    "disk_total_bytes",
    "temperature_celsius",  # the hottest sensor; None where there is none
    "uptime_seconds",
    "jobs_running",
)


def start_cpu_sampling() -> None:
    """Prime psutil's CPU counter so the first heartbeat has a real figure."""
    psutil.cpu_percent(interval=None)


def hottest_temperature() -> float | None:
    """The highest current reading of any temperature sensor, or None."""
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError):  # not on this platform, or unreadable
        return None
    readings = [
        entry.current
        for entries in sensors.values()
        for entry in entries
        if entry.current is not None and math.isfinite(entry.current)
    ]
    return max(readings) if readings else None


def collect_figures(disk: str, jobs_running: int) -> dict[str, float | int | None]:
    """
    Measure this machine.  Non-blocking sampling for the CPU, but the disk
    and sensor reads can stall (a hung NFS mount): call it in a thread.
    """
    memory = psutil.virtual_memory()
    try:
        usage = psutil.disk_usage(disk)
        disk_used, disk_total = usage.used, usage.total
    except OSError:
        disk_used = disk_total = None
    load_1m, load_5m, load_15m = os.getloadavg()
    return {
        "cpu_ratio": psutil.cpu_percent(interval=None) / 100,
        "load_1m": load_1m,
        "load_5m": load_5m,
        "load_15m": load_15m,
        "memory_used_bytes": memory.total - memory.available,
        "memory_total_bytes": memory.total,
        "disk_used_bytes": disk_used,
        "disk_total_bytes": disk_total,
        "temperature_celsius": hottest_temperature(),
        "uptime_seconds": max(0.0, time.time() - psutil.boot_time()),
        "jobs_running": jobs_running,
    }


def clean_figures(raw: dict[str, Any]) -> dict[str, float | None]:
    """A worker's figures as the master keeps them: known names, numbers or None."""
    figures: dict[str, float | None] = {}
    for name in FIGURES:
        value = raw.get(name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        figures[name] = value if ok and math.isfinite(value) else None
    return figures


class HealthHistory:
    """
    The last C{size} heartbeats of one worker, in a fixed ring of doubles
    (None stored as NaN): 200 workers' hour at one-second resolution fits in
    about 60 MiB.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._width = len(FIGURES) + 1  # the time, then the figures
        self._rows = array("d", [math.nan]) * (self.size * self._width)
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, when: float, figures: dict[str, float | None]) -> None:
        start = self._next * self._width
        self._rows[start] = when
        for offset, name in enumerate(FIGURES, 1):
            value = figures.get(name)
            self._rows[start + offset] = math.nan if value is None else value
        self._next = (self._next + 1) % self.size
        self._count = min(self._count + 1, self.size)

    def columns(self) -> dict[str, list[float | None]]:
        """The history oldest first, one list per figure plus C{time}."""
        first = (self._next - self._count) % self.size
        order = [(first + i) % self.size for i in range(self._count)]
        result: dict[str, list[float | None]] = {}
        for offset, name in enumerate(("time", *FIGURES)):
            column = [self._rows[row * self._width + offset] for row in order]
            result[name] = [None if math.isnan(v) else v for v in column]
        return result
