"""
The jobs this worker was sent, remembered on disk across its restarts, so
that when a master asks again for a job (its first C{run} may have gone
through a master that died) the worker can say whether it ever had it.

A job is written down before it starts: one short line appended to a
file (to the page cache, without C{fsync}: a worker killed keeps it; a
machine that loses power may not, and comes back without its jobs
anyway).  The file keeps the latest L{KEEP} jobs; it also says since
when its memory is whole (L{ReceivedJobs.since}): a job sent before then,
which the worker has no line of, may have been had and forgotten.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from twisted.logger import Logger

from pcci.files import write_atomically

log = Logger()

#: Jobs remembered, at most (about 50 bytes each, on disk and in memory).
KEEP = 100_000

#: The file's first line, before the time since which it is whole.
HEADER = "pcci received jobs 1"


class ReceivedJobs:
    """The pool ids of the jobs this worker was sent, and since when it knows them all."""

    def __init__(self, path: Path | None, wall: Callable[[], float] = time.time, keep: int = KEEP) -> None:
        self.path = path
        self.wall = wall
        self.keep = keep
        #: Pool id to the time it was received (this machine's clock), oldest first.
        self.ids: dict[str, float] = {}
        #: Since when (this machine's clock) every job received is in C{ids}.
        self.since = wall()
        self._fd: int | None = None
        self._lines = 0

    def load(self) -> None:
        """
        Read the file (blocking: at start, before the worker connects), keep
        its latest jobs, and write it again, compacted, for appending.
        """
        if self.path is None:
            return
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            head = lines[0].split()
            if " ".join(head[:-1]) != HEADER:
                raise ValueError("not a file of received jobs")
            self.since = float(head[-1])
            for line in lines[1:]:
                at, _, pool_id = line.partition(" ")
                if pool_id:
                    self.ids[pool_id] = float(at)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, IndexError) as e:
            log.warn("ignoring the unreadable file of received jobs {path}: {why}", path=str(self.path), why=e)
            self.ids, self.since = {}, self.wall()
        self._forget_beyond_keep()
        self._compact()

    def had(self, pool_id: str) -> bool:
        return pool_id in self.ids

    def add(self, pool_id: str) -> None:
        """Remember a job before it runs: a line appended now (a small write to the page cache)."""
        at = self.wall()
        self.ids[pool_id] = at
        if self._fd is not None:
            try:
                os.write(self._fd, f"{at:.3f} {pool_id}\n".encode())
            except OSError as e:
                log.warn("cannot write down received job {pool}: {why}", pool=pool_id, why=e)
            self._lines += 1
        self._forget_beyond_keep()
        if self._lines > 2 * self.keep:
            self._compact()

    def _forget_beyond_keep(self) -> None:
        while len(self.ids) > self.keep:
            oldest = next(iter(self.ids))
            self.since = max(self.since, self.ids.pop(oldest))

    def _compact(self) -> None:
        """Write the file again with only what is remembered, and append to that one."""
        if self.path is None:
            return
        self.close()
        text = f"{HEADER} {self.since:.3f}\n" + "".join(f"{at:.3f} {pool_id}\n" for pool_id, at in self.ids.items())
        try:
            write_atomically(self.path, text)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            log.warn("cannot keep the file of received jobs {path}: {why}", path=str(self.path), why=e)
        self._lines = len(self.ids)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
