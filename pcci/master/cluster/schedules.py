"""
Schedules: pools that start by themselves, on a cron line in a time zone.

A schedule is kept in the master's store with the C{POST /job} body it
runs; every master sharing the store arms a timer for its next run, and
the store lets exactly one of them start it (L{SchedulesStore.claim_run}:
the run's time moves the schedule's C{last_run} forward once).  Cron lines
are cronsim's, time zones the standard library's C{zoneinfo}: a run at a
time a daylight-saving change skips happens at the change, one in an hour
that happens twice happens once (as Debian's cron does).

A run is skipped when the schedule's previous pool still runs (unless
C{overlap}); runs missed while no master was up are not made up, unless
C{catch_up}: then the latest one runs once at start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Callable, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pcci.auth import NAME

log = Logger()

#: The usual shorthands, as the five fields they stand for.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: Runs each schedule remembers, newest last.
RUNS_KEPT = 20

#: What a run's C{outcome} may be.
STARTED, SKIPPED, REFUSED = "started", "skipped", "refused"

_NAME_HELP = "name: 1 to 64 letters, digits and any of _ . @ : -"


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message names the field at fault."""


def check_cron(cron: Any, seconds: bool = False) -> str:
    """
    A cron line: five fields or a shorthand (C{@daily}); with C{seconds}
    (tests only), six, seconds first.

    @raise ScheduleError: saying what is wrong with it.
    """
    if not isinstance(cron, str) or not cron.strip():
        raise ScheduleError("cron must be a cron line: five fields, or @hourly, @daily…")
    line = MACROS.get(cron.strip().lower(), cron.strip())
    if len(line.split()) != 5 and not (seconds and len(line.split()) == 6):
        raise ScheduleError(f"cron {cron!r}: five fields (minute hour day month weekday), or @hourly, @daily…")
    try:
        CronSim(line, datetime.now(timezone.utc))
    except CronSimError as e:
        raise ScheduleError(f"cron {cron!r}: {e}") from None
    return cron.strip()


def check_timezone(name: Any) -> ZoneInfo:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_+\-/]{1,64}", name):
        raise ScheduleError("timezone must be an IANA name, e.g. Europe/Berlin or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"timezone {name!r} is not a time zone this master knows") from None


def run_times(cron: str, zone: str, after: float, count: int) -> list[float]:
    """The next C{count} times (POSIX seconds) C{cron} fires in C{zone}, after C{after}."""
    moments = CronSim(MACROS.get(cron.lower(), cron), datetime.fromtimestamp(after, ZoneInfo(zone)))
    return [next(moments).timestamp() for _ in range(count)]


def last_time(cron: str, zone: str, at_or_before: float) -> float:
    """The latest time C{cron} fired in C{zone}, at or before C{at_or_before}."""
    moments = CronSim(
        MACROS.get(cron.lower(), cron),
        datetime.fromtimestamp(int(at_or_before) + 1, ZoneInfo(zone)),
        reverse=True,
    )
    return next(moments).timestamp()


@dataclass
class Schedule:
    """A schedule as stored: what it runs and when, and what it did lately."""

    name: str
    cron: str
    #: The C{POST /job} body each run starts (cmd, targets, options).
    job: dict[str, Any]
    timezone: str = "UTC"
    paused: bool = False
    overlap: bool = False
    catch_up: bool = False
    #: The token that made it: each run is checked as that token's.
    created_by: str | None = None
    created_at: float = 0.0
    #: Kept beside the record, each in a column of its own.
    last_run: float = 0.0
    skipped: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)

    #: The fields of the record (the others have columns of their own).
    RECORD = ("cron", "job", "timezone", "paused", "overlap", "catch_up", "created_by", "created_at")

    def record(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.RECORD}

    @classmethod
    def from_row(cls, name: str, record: dict[str, Any], last_run: float, skipped: int,
                 runs: list[dict[str, Any]]) -> Schedule:
        known = {f.name for f in fields(cls)}
        return cls(name=name, last_run=last_run, skipped=skipped, runs=runs,
                   **{k: v for k, v in record.items() if k in known})


class SchedulesStore(Protocol):
    """What the scheduler needs of the master's store (see L{pcci.master.store.schedules})."""

    def all(self) -> Deferred[list[Schedule]]: ...

    def put(self, schedule: Schedule, create: bool) -> Deferred[bool]:
        """Keep a new schedule (false if one of its name exists), or change one (false if none)."""

    def remove(self, name: str) -> Deferred[bool]:
        """Forget a schedule; false if there is none."""

    def claim_run(self, name: str, at: float) -> Deferred[bool]:
        """Move C{last_run} to C{at} if it is earlier: true for the one master that did."""

    def note_run(self, name: str, run: dict[str, Any]) -> Deferred[None]:
        """Keep a run's outcome (the latest L{RUNS_KEPT}); count it if skipped."""


#: What starts a run's pool: the schedule, in, and the pool's id out; it
#: fails with a L{ScheduleError} (or another error) saying why it could not.
Starter = Callable[[Schedule], Deferred[str]]


class Scheduler:
    """The timers of every schedule's next run, on this master."""

    def __init__(
        self,
        clock: IReactorTime,
        wall: Callable[[], float],
        store: SchedulesStore,
        start: Starter,
        running: Callable[[str], Deferred[bool]],
        seconds: bool = False,
    ) -> None:
        self.clock = clock
        #: Cron lines may have six fields, seconds first (for tests only).
        self.seconds = seconds
        self.wall = wall
        self.store = store
        self.start_pool = start
        #: Whether a pool (by id) still runs.
        self.running = running
        self.schedules: dict[str, Schedule] = {}
        #: Called with the outcome of each run this master handled (for metrics).
        self.on_run: Callable[[str], None] = lambda outcome: None
        self._timers: dict[str, IDelayedCall] = {}

    def start(self) -> Deferred[None]:
        """Read the schedules, arm them, and run the missed ones that catch up."""
        return self.reload(catch_up=True)

    def stop(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()

    def reload(self, catch_up: bool = False) -> Deferred[None]:
        """Read the schedules again (one changed, here or on another master), and arm them."""

        def read(schedules: list[Schedule]) -> None:
            now = self.wall()
            self.schedules = {s.name: s for s in schedules}
            for name in list(self._timers):
                if name not in self.schedules:
                    self._cancel(name)
            for schedule in schedules:
                self._arm(schedule, now)
                if catch_up and schedule.catch_up and not schedule.paused:
                    missed = last_time(schedule.cron, schedule.timezone, now)
                    if missed > max(schedule.last_run, schedule.created_at):
                        log.info("schedule {name}: catching up the run of {at}", name=schedule.name,
                                 at=_moment(missed, schedule.timezone))
                        self._claim(schedule, missed)

        return self.store.all().addCallback(read)

    def next_runs(self, schedule: Schedule, count: int = 3) -> list[float]:
        """Its next C{count} run times (none while paused)."""
        if schedule.paused:
            return []
        return run_times(schedule.cron, schedule.timezone, self.wall(), count)

    # Timers

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _arm(self, schedule: Schedule, after: float) -> None:
        self._cancel(schedule.name)
        if schedule.paused:
            return
        (at,) = run_times(schedule.cron, schedule.timezone, after, 1)
        delay = max(0.0, at - self.wall())
        self._timers[schedule.name] = self.clock.callLater(delay, self._due, schedule.name, at)

    def _due(self, name: str, at: float) -> None:
        self._timers.pop(name, None)
        schedule = self.schedules.get(name)
        if schedule is None or schedule.paused:
            return
        if self.wall() < at - 1.0:  # the wall clock was set back meanwhile
            self._arm(schedule, self.wall())
            return
        self._arm(schedule, at)
        self._claim(schedule, at)

    # Runs

    def _claim(self, schedule: Schedule, at: float) -> None:
        def claimed(won: bool) -> Deferred[None] | None:
            if not won:
                return None  # another master runs it, or ran it
            schedule.last_run = at
            return self._run(schedule, at)

        self.store.claim_run(schedule.name, at).addCallback(claimed).addErrback(
            lambda f: log.error("schedule {name}: its run of {at} was not started: {why}",
                                name=schedule.name, at=_moment(at, schedule.timezone),
                                why=f.getErrorMessage())
        )

    def _run(self, schedule: Schedule, at: float) -> Deferred[None]:
        previous = next((r["pool"] for r in reversed(schedule.runs) if r.get("pool")), None)
        check = succeed(False) if previous is None or schedule.overlap else self.running(previous)

        def go(busy: bool) -> Deferred[dict[str, Any]]:
            if busy:
                return succeed({"outcome": SKIPPED, "why": f"pool {previous} still runs"})
            started = self.start_pool(schedule)
            d: Deferred[dict[str, Any]] = started.addCallback(lambda pool_id: {"outcome": STARTED, "pool": pool_id})
            return d.addErrback(lambda f: {"outcome": REFUSED, "why": f.getErrorMessage()})

        def noted(run: dict[str, Any]) -> Deferred[None]:
            run["at"] = at
            schedule.runs = (schedule.runs + [run])[-RUNS_KEPT:]
            if run["outcome"] == SKIPPED:
                schedule.skipped += 1
            log.info("schedule {name}: run of {at} {outcome}{why}", name=schedule.name,
                     at=_moment(at, schedule.timezone), outcome=run["outcome"],
                     why=f": {run['why']}" if "why" in run else f" pool {run.get('pool')}")
            self.on_run(run["outcome"])
            return self.store.note_run(schedule.name, run)

        return check.addCallback(go).addCallback(noted)


def _moment(at: float, zone: str) -> str:
    return datetime.fromtimestamp(at, ZoneInfo(zone)).isoformat(timespec="seconds")


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ScheduleError(_NAME_HELP)
    return name
