"""A worker measures its machine with psutil for its heartbeats."""

from __future__ import annotations

import math
import os
import time

import psutil


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
