"""
The master's side of a fetch (C{pcci fetch}, C{POST /fetches}): files read
on each worker, gathered as one tar archive per worker, downloaded after.

A fetch is a pool whose jobs start with a C{get} (see
L{pcci.worker.sender}).  What a worker sends is written, as it comes, to a
temporary tar file of that worker's on the master's disk (pieces of at
most L{CHUNK}: bounded writes), and acknowledged (C{get_ack}) so the
worker sends at most L{WINDOW} ahead: the master's memory stays flat
whatever the size.  Once a job has ended, C{GET /fetches/<pool>/<worker>}
streams that archive; it is deleted after L{KEPT} seconds.
"""

from __future__ import annotations

import tarfile
import tempfile
from typing import IO, Any, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from pcci.master.cluster.model import Job, WorkerLink
from pcci.master.cluster.reports import JobReports
from pcci.master.transfers.pushes import transfer_refusal
from pcci.transfer import KINDS, WINDOW, safe_path

#: Seconds a fetched archive is kept on the master after its fetch ended.
KEPT = 600.0


class Fetch:
    """One fetch: the path asked for, and an archive per worker."""

    def __init__(
        self,
        reports: JobReports,
        clock: IReactorTime,
        path: str,
        recursive: bool,
        registry: dict[str, Fetch],
    ) -> None:
        self.reports = reports
        self.clock = clock
        self.path = path
        self.recursive = recursive
        self.registry = registry
        self.archives: dict[str, _Archive] = {}
        self.pool_id: str | None = None
        self._expiry: IDelayedCall | None = None

    def start(self, job: Job, link: WorkerLink) -> None:
        """Ask one worker for the files (the pool's way of starting a job)."""
        self.pool_id = job.pool_id
        self.registry[job.pool_id] = self
        refusal = transfer_refusal(link, "fetch through it")
        if refusal is not None:
            self.reports.fail(job, refusal)
            return
        # Connected to this master (see transfer_refusal): frames go to it directly.
        connection = cast(Any, link)
        self.archives[job.worker_id] = _Archive(job, connection)
        connection.sendMessage("get", pool=job.pool_id, path=self.path, recursive=self.recursive)
        self.reports.job_started(job.worker_id, job.pool_id, None)

    def ended(self) -> None:
        """The pool ended: its archives are complete, and kept a while."""
        for archive in self.archives.values():
            archive.close()
        self._expiry = self.clock.callLater(KEPT, self.forget)

    def forget(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        for archive in self.archives.values():
            archive.file.close()
        self.archives.clear()
        if self.pool_id is not None:
            self.registry.pop(self.pool_id, None)


class _Archive:
    """What one worker sent, as a tar file in the making."""

    def __init__(self, job: Job, link: Any) -> None:
        self.job = job
        self.link = link
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix="pcci-fetch-")
        self.pending: dict[str, tarfile.TarInfo] = {}
        self.received = 0
        self.acked = 0
        self.problem: str | None = None

    def entries(self, entries: list[Any]) -> None:
        for body in entries:
            info = _member(body)
            if info is None:
                self.problem = "the worker sent an entry that is not a file, a directory or a link"
                continue
            if info.isreg() and info.size:
                self.pending[info.name] = info
            else:
                self.file.write(info.tobuf(tarfile.PAX_FORMAT))

    def data(self, path: str, offset: int, data: bytes) -> None:
        """A piece of a file: written (its header first), then acknowledged in steps."""
        info = self.pending.get(path)
        if info is None or offset + len(data) > info.size:
            self.problem = f"the worker sent data for {path!r} it did not list"
            return
        if offset == 0:
            self.file.write(info.tobuf(tarfile.PAX_FORMAT))
        self.file.write(data)
        if offset + len(data) == info.size:
            del self.pending[path]
            remainder = info.size % tarfile.BLOCKSIZE
            if remainder:
                self.file.write(b"\0" * (tarfile.BLOCKSIZE - remainder))
        self.received += len(data)
        if self.received - self.acked >= WINDOW // 4 or not self.pending:
            self.acked = self.received
            self.link.sendMessage("get_ack", pool=self.job.pool_id, read=self.received)

    def close(self) -> None:
        """The end of the archive."""
        self.file.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self.file.flush()


def _member(body: Any) -> tarfile.TarInfo | None:
    """A worker's entry as a tar member, or None for one that is malformed."""
    if not isinstance(body, dict) or body.get("kind") not in KINDS:
        return None
    try:
        info = tarfile.TarInfo(safe_path(str(body.get("path", ""))))
        info.mode = int(body["mode"]) & 0o7777
        info.mtime = float(body["mtime"])
    except (ValueError, KeyError, TypeError):
        return None
    if body["kind"] == "dir":
        info.type = tarfile.DIRTYPE
    elif body["kind"] == "link":
        info.type, info.linkname = tarfile.SYMTYPE, str(body.get("target", ""))
    else:
        size = body.get("size")
        if not isinstance(size, int) or size < 0:
            return None
        info.size = size
    return info
