"""The figures a worker measures, and the history the master keeps."""

from __future__ import annotations

import math
from collections import namedtuple

import psutil
import pytest

from pcci.master.cluster.health import HealthHistory, clean_figures
from pcci.wire import FIGURES
from pcci.worker import health
from pcci.worker.health import collect_figures


def test_figures_have_every_name_in_base_units() -> None:
    health.start_cpu_sampling()
    figures = collect_figures("/", jobs_running=2)
    assert set(figures) == set(FIGURES)
    assert 0 <= figures["cpu_ratio"] <= 1
    assert 0 < figures["memory_used_bytes"] <= figures["memory_total_bytes"]
    assert figures["memory_total_bytes"] == psutil.virtual_memory().total
    assert 0 < figures["disk_used_bytes"] <= figures["disk_total_bytes"]
    assert figures["uptime_seconds"] > 0
    assert all(figures[f"load_{p}"] >= 0 for p in ("1m", "5m", "15m"))
    assert figures["jobs_running"] == 2


def test_no_temperature_sensor_is_null(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {}, raising=False)
    assert collect_figures("/", 0)["temperature_celsius"] is None


def test_hottest_sensor_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    Reading = namedtuple("Reading", "label current high critical")  # psutil's shape
    sensors = {
        "cpu_thermal": [Reading("", 48.5, None, None)],
        "nvme": [Reading("Composite", 39.0, 80.0, 85.0), Reading("x", float("nan"), None, None)],
    }
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: sensors, raising=False)
    assert health.hottest_temperature() == 48.5


def test_missing_disk_is_null_not_an_error() -> None:
    figures = collect_figures("/no/such/disk", 0)
    assert figures["disk_used_bytes"] is None and figures["disk_total_bytes"] is None


def test_clean_figures_keeps_only_finite_numbers() -> None:
    cleaned = clean_figures(
        {"cpu_ratio": 0.5, "load_1m": "high", "jobs_running": True, "uptime_seconds": math.inf, "extra": 1}
    )
    assert set(cleaned) == set(FIGURES)
    assert cleaned["cpu_ratio"] == 0.5
    assert cleaned["load_1m"] is None and cleaned["jobs_running"] is None
    assert cleaned["uptime_seconds"] is None


def test_history_is_a_bounded_ring_oldest_first() -> None:
    history = HealthHistory(3)
    for second in range(5):
        history.add(float(second), {"cpu_ratio": second / 10, "temperature_celsius": None})
    assert len(history) == 3
    columns = history.columns()
    assert columns["time"] == [2.0, 3.0, 4.0]
    assert columns["cpu_ratio"] == [0.2, 0.3, 0.4]
    assert columns["temperature_celsius"] == [None, None, None]
    assert set(columns) == {"time", *FIGURES}


def test_empty_history() -> None:
    assert HealthHistory(10).columns()["time"] == []
