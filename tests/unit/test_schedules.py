"""The scheduler, driven by a Clock over a store in memory: when runs happen, skips, catch-up, DST."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from pcci.master.cluster.schedules import (
    Schedule,
    ScheduleError,
    Scheduler,
    check_cron,
    check_timezone,
    run_times,
)

BERLIN = ZoneInfo("Europe/Berlin")


def at(*parts: int, zone: ZoneInfo = BERLIN) -> float:
    return datetime(*parts, tzinfo=zone).timestamp()


class MemoryStore:
    """The scheduler's side of the store, in memory; claims as the real ones make them."""

    def __init__(self, *schedules: Schedule) -> None:
        self.rows = {s.name: s for s in schedules}
        self.claims: list[tuple[str, float]] = []

    def all(self) -> Deferred[list[Schedule]]:
        return succeed([Schedule(**vars(s)) for s in self.rows.values()])

    def claim_run(self, name: str, when: float) -> Deferred[bool]:
        row = self.rows[name]
        if row.last_run >= when:
            return succeed(False)
        row.last_run = when
        self.claims.append((name, when))
        return succeed(True)

    def note_run(self, name: str, run: dict[str, Any]) -> Deferred[None]:
        self.rows[name].runs.append(run)
        self.rows[name].skipped += run["outcome"] == "skipped"
        return succeed(None)


class Harness:
    def __init__(self, start: float, *schedules: Schedule) -> None:
        self.clock = Clock()
        self.clock.advance(start)
        self.store = MemoryStore(*schedules)
        self.started: list[tuple[str, float]] = []
        #: Pools started that still run (with keep_running, each new one does).
        self.still_running: set[str] = set()
        self.keep_running = False
        self.scheduler = Scheduler(self.clock, self.clock.seconds, self.store, self.start, self.running)

    def start(self, schedule: Schedule) -> Deferred[str]:
        pool = f"pool-{len(self.started) + 1}"
        self.started.append((schedule.name, self.clock.seconds()))
        if self.keep_running:
            self.still_running.add(pool)
        return succeed(pool)

    def running(self, pool: str) -> Deferred[bool]:
        return succeed(pool in self.still_running)

    def run_until(self, end: float, step: float = 60.0) -> None:
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))


def schedule(cron: str, **more: Any) -> Schedule:
    return Schedule(name=more.pop("name", "s"), cron=cron, job={"cmd": "true", "workers": ["*"]},
                    timezone=more.pop("timezone", "Europe/Berlin"), **more)


def test_cron_lines_and_time_zones_are_checked() -> None:
    assert check_cron("@daily") == "@daily"
    assert check_cron(" */5 * * * * ") == "*/5 * * * *"
    for bad in ("", "* * * *", "61 * * * *", "@sometimes", 5):
        with pytest.raises(ScheduleError, match="cron"):
            check_cron(bad)
    with pytest.raises(ScheduleError):
        check_cron("*/2 * * * * *")  # seconds: tests only
    assert check_cron("*/2 * * * * *", seconds=True)
    with pytest.raises(ScheduleError, match="timezone"):
        check_timezone("Mars/Olympus")


def test_the_next_runs_are_in_the_schedule_s_time_zone() -> None:
    times = run_times("30 9 * * 1-5", "Europe/Berlin", at(2026, 12, 4, 12, 0), 3)  # a Friday
    assert times == [at(2026, 12, 7, 9, 30), at(2026, 12, 8, 9, 30), at(2026, 12, 9, 9, 30)]
    assert run_times("@hourly", "UTC", at(2026, 12, 1, 10, 15, zone=ZoneInfo("UTC")), 1) == [
        at(2026, 12, 1, 11, 0, zone=ZoneInfo("UTC"))
    ]


def test_runs_at_each_time_and_only_once() -> None:
    h = Harness(at(2026, 12, 1, 9, 58), schedule("*/5 * * * *", created_at=at(2026, 12, 1, 9, 0)))
    h.scheduler.start()
    h.run_until(at(2026, 12, 1, 10, 16))
    assert [when for _, when in h.started] == [at(2026, 12, 1, 10, 0), at(2026, 12, 1, 10, 5),
                                              at(2026, 12, 1, 10, 10), at(2026, 12, 1, 10, 15)]
    # A second master on the same store claims nothing twice.
    other = Scheduler(h.clock, h.clock.seconds, h.store, h.start, h.running)
    other.start()
    h.run_until(at(2026, 12, 1, 10, 21))
    assert len(h.started) == 5 and len(h.store.claims) == 5


def test_a_run_is_skipped_while_the_last_pool_runs_unless_overlap() -> None:
    h = Harness(at(2026, 12, 1, 9, 59), schedule("*/5 * * * *"), schedule("*/5 * * * *", name="o", overlap=True))
    h.keep_running = True
    h.scheduler.start()
    h.run_until(at(2026, 12, 1, 10, 6))
    assert sorted(name for name, _ in h.started) == ["o", "o", "s"]
    assert h.store.rows["s"].skipped == 1
    assert h.store.rows["s"].runs[-1]["outcome"] == "skipped"
    h.still_running.clear()
    h.keep_running = False
    h.run_until(at(2026, 12, 1, 10, 11))
    assert [name for name, _ in h.started].count("s") == 2


def test_missed_runs_are_not_made_up_unless_catch_up() -> None:
    made = at(2026, 12, 1, 6, 0)
    plain = schedule("0 7 * * *", name="plain", created_at=made)
    eager = schedule("0 7 * * *", name="eager", catch_up=True, created_at=made)
    h = Harness(at(2026, 12, 1, 9, 0), plain, eager)  # no master was up at 7:00
    h.scheduler.start()
    assert h.started == [("eager", at(2026, 12, 1, 9, 0))]
    assert h.store.rows["eager"].last_run == at(2026, 12, 1, 7, 0)
    h.scheduler.start()  # a restart: the same missed run is not run twice
    assert len(h.started) == 1


def test_a_paused_schedule_does_not_run() -> None:
    h = Harness(at(2026, 12, 1, 9, 59), schedule("*/5 * * * *", paused=True))
    h.scheduler.start()
    h.run_until(at(2026, 12, 1, 10, 30))
    assert h.started == [] and h.scheduler.next_runs(h.scheduler.schedules["s"]) == []


def test_daylight_saving_changes() -> None:
    # 2026-03-29 in Berlin: 02:00 becomes 03:00.  2026-10-25: 03:00 becomes 02:00 again.
    h = Harness(at(2026, 3, 28, 12, 0), schedule("30 2 * * *", name="night"), schedule("0 * * * *", name="hourly"))
    h.scheduler.start()
    h.run_until(at(2026, 3, 29, 6, 0), step=600)
    nights = [when for name, when in h.started if name == "night"]
    assert nights == [at(2026, 3, 29, 3, 0)]  # the skipped 02:30 runs at the change, once
    hours = [when for name, when in h.started if name == "hourly"]
    assert len(hours) == 17  # 13:00 on the 28th to 06:00 on the 29th; that night has no 02:00
    assert all(b - a == 3600 for a, b in zip(hours, hours[1:]))  # no hour run twice or lost
    h.run_until(at(2026, 10, 25, 4, 0), step=3600)
    autumn = [when for name, when in h.started if name == "night" and when > at(2026, 10, 24, 12, 0)]
    assert len(autumn) == 1  # 02:30 happens twice that night: it runs once


def test_a_run_that_cannot_start_says_why() -> None:
    h = Harness(at(2026, 12, 1, 9, 59), schedule("*/5 * * * *"))
    h.scheduler.start_pool = lambda s: fail(ScheduleError("the token bob that made it is gone"))
    h.scheduler.start()
    h.clock.advance(60)
    assert h.store.rows["s"].runs == [
        {"outcome": "refused", "why": "the token bob that made it is gone", "at": at(2026, 12, 1, 10, 0)}
    ]
