"""
The worker's journal of the jobs it runs, kept on disk so that a worker
that died without cleaning up (SIGKILL, the OOM killer) kills at its next
start what it had left running.

Each entry is a job's process group with its leader's start time, so a pid
reused by a stranger is never killed, and the job's marker, which finds the
processes that left the group.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Collection
from pathlib import Path
from typing import Any, Callable

import psutil
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from pcci.files import write_atomically
from pcci.worker.reaper import find_processes, marker_of

log = Logger()

#: Seconds from a change to its write: a job that starts and ends within
#: it costs no write at all.
WRITE_DELAY = 0.1


def start_time(pid: int) -> float | None:
    """A process's start time as psutil tells it (what journals written before start ticks hold)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def start_ticks(pid: int) -> int | str | None:
    """
    When a process started, as the kernel counts (clock ticks since boot,
    field 22 of C{/proc/<pid>/stat}): one read, once a job is journaled.  With
    no C{/proc}, psutil's start time, as text.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None  # gone
    except OSError:
        started = start_time(pid)
        return None if started is None else repr(started)
    try:
        # The name, in parentheses, may hold anything: count from its end.
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


class JobJournal:
    """
    The jobs running now, written to C{path} L{WRITE_DELAY} after a change
    (in a thread, one write at a time, coalescing changes made meanwhile,
    and none when nothing changed since the last write).
    """

    def __init__(
        self,
        path: Path,
        clock: IReactorTime,
        write: Callable[[Path, str], Deferred[None]] = lambda path, text: deferToThread(
            write_atomically, path, text
        ),
    ) -> None:
        self.path = path
        self._clock = clock
        self._write = write
        self.entries: dict[int, dict[str, Any]] = {}
        self._writing = False
        self._dirty = False
        self._call: IDelayedCall | None = None
        self._written = json.dumps({"jobs": []})
        self._waiting: list[Deferred[None]] = []
        self._stopping = False

    def add(self, pgid: int, marker: str) -> None:
        # When it started is read as the journal is written: most jobs have
        # ended by then, and cost no read.
        self.entries[pgid] = {"pgid": pgid, "marker": marker}
        self._changed()

    def remove(self, pgid: int) -> None:
        if self.entries.pop(pgid, None) is not None:
            self._changed()

    def _changed(self) -> None:
        self._dirty = True
        if self._writing:
            return  # written again once this write is done
        if self._stopping:
            self._flush()
        elif self._call is None:
            self._call = self._clock.callLater(WRITE_DELAY, self._flush)

    def stop(self) -> Deferred[None]:
        """
        The worker stops: write what changed now rather than after the delay;
        fires once the journal on disk is up to date.
        """
        self._stopping = True
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None
        if self._dirty and not self._writing:
            self._flush()
        d: Deferred[None] = Deferred()
        if self._writing:
            self._waiting.append(d)
        else:
            d.callback(None)
        return d

    def _flush(self) -> None:
        self._call = None
        self._dirty = False
        for entry in self.entries.values():
            if "ticks" not in entry:
                entry["ticks"] = start_ticks(entry["pgid"])
        text = json.dumps({"jobs": list(self.entries.values())})
        if text == self._written:
            return
        self._writing = True
        self._written = text
        d = self._write(self.path, text)

        def failed(failure: Any) -> None:
            self._written = ""  # unknown: write the next time
            log.warn(
                "cannot write the job journal {path}: {why}",
                path=str(self.path),
                why=failure.getErrorMessage(),
            )

        d.addErrback(failed)

        def written(_: Any) -> None:
            self._writing = False
            if self._dirty:
                self._changed()
            if not self._writing:
                waiting, self._waiting = self._waiting, []
                for d in waiting:
                    d.callback(None)

        d.addBoth(written)


def kill_leftovers(path: Path, marker_prefix: str, grace: float, keep: Collection[str] = ()) -> int:
    """
    Kill what a previous run of this worker left running, as its journal at
    C{path} and the marker prefix tell: TERM, then KILL after C{grace}; but
    the processes of the jobs whose markers are in C{keep} (carried on with,
    across an upgrade's exec).  Blocks: run it in a thread, at start.

    @return: how many processes were signalled.
    """
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["jobs"]
    except FileNotFoundError:
        entries = []
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warn("ignoring an unreadable job journal {path}: {why}", path=str(path), why=e)
        entries = []
    pgids = set()
    for entry in entries:
        try:
            pgid = int(entry["pgid"])
        except (KeyError, TypeError, ValueError):
            continue
        then = entry.get("ticks", entry.get("started"))
        now: object = start_ticks(pgid) if "ticks" in entry else start_time(pgid)
        if now is not None and then is not None and now != then:
            continue  # the pid was reused by a stranger: not ours
        pgids.add(pgid)
    victims = [proc for proc in find_processes(pgids, marker_prefix, prefix=True) if marker_of(proc.pid) not in keep]
    if victims:
        log.warn(
            "killing {count} processes left running by this worker's last run",
            count=len(victims),
        )
    for proc in victims:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(victims, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    path.unlink(missing_ok=True)
    return len(victims)
