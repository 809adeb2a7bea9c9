"""
The master's side of a push (C{pcci cp}, C{POST /files}): a tar of files,
spooled once, fanned out to each worker at that worker's pace.

The upload arrives as a tar archive, which Twisted spools to a temporary
file.  L{read_archive} (in a thread) lists its entries and hashes its
files.  Then the push is a pool: one job per worker, whose start sends
the entries (see L{pcci.transfer}).  Each worker answers which files it
needs; a L{_Sender} sends their bytes, read from the spool, never more
than L{WINDOW} ahead of what that worker wrote, so a slow worker slows
only itself and the master holds a few frames per worker, whatever the
size.  Frames are encoded once for every worker at the same place
(L{FrameCache}).  The worker reports the end like a job's.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import IO, Any, cast

from pcci.master.cluster.model import Job, WorkerLink
from pcci.master.cluster.reports import JobReports
from pcci.transfer import CHUNK, WINDOW, Entry, UnsafePath, batches, safe_path
from pcci.wire import encode

#: Encoded data frames kept for workers that are at the same place, at most.
CACHED_FRAMES = 16


class ArchiveError(ValueError):
    """An upload that is not a tar of files, directories and links, or holds an unsafe path."""


class ShortRead(ArchiveError):
    """The spooled upload holds fewer bytes than a member said it has."""


class Spool:
    """The uploaded archive, read at any offset without moving a shared position."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self._fd = file.fileno() if not isinstance(file, io.BytesIO) else None

    @property
    def size(self) -> int:
        """Bytes the upload really holds."""
        if self._fd is None:
            assert isinstance(self.file, io.BytesIO)
            return self.file.getbuffer().nbytes
        return os.fstat(self._fd).st_size

    def read(self, offset: int, size: int) -> bytes:
        """
        Exactly C{size} bytes at C{offset} (a bounded read of a local file).

        @raise ShortRead: the upload ends before them.
        """
        if self._fd is None:
            assert isinstance(self.file, io.BytesIO)
            data = bytes(self.file.getbuffer()[offset:offset + size])
        else:
            data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise ShortRead(f"the upload ends at byte {offset + len(data)}, before byte {offset + size}")
        return data

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class Archive:
    """What an upload holds: its entries, and where each file's bytes are."""

    entries: list[Entry]
    offsets: dict[str, int]

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.entries)


#: Entries of one push, by default: each costs the master about a KiB
#: while the push lasts.
MAX_ENTRIES = 100_000


def read_archive(spool: Spool, max_entries: int = MAX_ENTRIES) -> Archive:
    """
    List a tar's entries and hash its files (blocking: run it in a thread).

    @raise ArchiveError: not a tar, more than C{max_entries} entries, an
        entry of another kind, an unsafe path, or one whose bytes run past
        the upload's end.
    """
    entries: list[Entry] = []
    offsets: dict[str, int] = {}
    spool.file.seek(0)
    uploaded = spool.size
    try:
        with tarfile.open(fileobj=spool.file, mode="r:") as archive:
            while (member := archive.next()) is not None:
                # tarfile's list of every member (not in its type stubs): not needed here
                cast(Any, archive).members.clear()
                if len(entries) >= max_entries:
                    raise ArchiveError(
                        f"the archive holds more than {max_entries} entries (--max-push-entries):"
                        " push it in parts"
                    )
                entries.append(_entry(member, spool, uploaded))
                if member.isreg():
                    offsets[entries[-1].path] = member.offset_data
    except tarfile.TarError as e:
        raise ArchiveError(f"the body is not a tar archive: {e}") from None
    if not entries:
        raise ArchiveError("the archive is empty")
    return Archive(entries, offsets)


def _entry(member: tarfile.TarInfo, spool: Spool, uploaded: int) -> Entry:
    name = member.name[2:] if member.name.startswith("./") else member.name
    try:
        path = safe_path(name.rstrip("/"))
    except UnsafePath as e:
        raise ArchiveError(str(e)) from None
    mode, mtime = member.mode & 0o7777, float(member.mtime)
    if member.isdir():
        return Entry(path, "dir", mode=mode, mtime=mtime)
    if member.issym():
        return Entry(path, "link", mode=mode, mtime=mtime, target=member.linkname)
    if not member.isreg():
        raise ArchiveError(f"{path}: only files, directories and symbolic links are pushed")
    if member.issparse() or member.type == tarfile.GNUTYPE_SPARSE:
        # Its size is not the bytes the archive holds: pack it without -S (--sparse).
        raise ArchiveError(f"{path}: a sparse file (tar -S) is not pushed: pack it without -S")
    if member.size < 0 or member.offset_data + member.size > uploaded:
        raise ArchiveError(
            f"{path}: its {member.size} bytes run past the end of the upload ({uploaded} bytes)"
        )
    digest = hashlib.sha256()
    for offset in range(0, member.size, 1024 * 1024):
        digest.update(spool.read(member.offset_data + offset, min(1024 * 1024, member.size - offset)))
    return Entry(path, "file", member.size, mode, mtime, digest.hexdigest())


def transfer_refusal(link: WorkerLink, elsewhere: str) -> str | None:
    """
    Why files cannot go to or come from this worker through this master, if
    they cannot.  (Every protocol a master accepts has files.)
    """
    if link.master is not None:
        return f"worker {link.name} is held by master {link.master}: {elsewhere}"
    return None


class FrameCache:
    """Data frames (and their raw bytes) by (path, offset): workers at the same place share them."""

    def __init__(self, pool_id: str, spool: Spool, archive: Archive) -> None:
        self.pool_id = pool_id
        self.spool = spool
        self.archive = archive
        self._frames: OrderedDict[tuple[str, int], tuple[bytes, int]] = OrderedDict()

    def frame(self, path: str, offset: int, size: int) -> tuple[bytes, int]:
        """The frame of C{path}'s bytes from C{offset}, and how many it carries."""
        key = (path, offset)
        found = self._frames.get(key)
        if found is not None:
            self._frames.move_to_end(key)
            return found
        data = self.spool.read(self.archive.offsets[path] + offset, min(CHUNK, size - offset))
        header = {"code": "put_data", "pool": self.pool_id, "path": path, "offset": offset, "size": len(data)}
        found = encode(header) + data, len(data)
        self._frames[key] = found
        if len(self._frames) > CACHED_FRAMES:
            self._frames.popitem(last=False)
        return found


@dataclass(frozen=True)
class Destination:
    """Where a push writes on each worker, and how (C{pcci push}'s options)."""

    path: str
    #: Make the directory and its parents if missing.
    mkdir: bool = False
    #: The files' mode, and their owner (C{USER} or C{USER:GROUP}), if set.
    mode: int | None = None
    owner: str | None = None

    def options(self) -> dict[str, Any]:
        """The fields of the C{put} frame that carry these options."""
        options: dict[str, Any] = {"mkdir": self.mkdir}
        if self.mode is not None:
            options["mode"] = self.mode
        if self.owner is not None:
            options["owner"] = self.owner
        return options


class Push:
    """One push: its pool, its archive, and a sender per worker."""

    def __init__(
        self, reports: JobReports, spool: Spool, archive: Archive, destination: Destination,
        registry: dict[str, Push],
    ) -> None:
        self.reports = reports
        self.registry = registry
        self.spool = spool
        self.archive = archive
        self.dest = destination.path
        self.options = destination.options()
        #: Each file's size.
        self.sizes = {entry.path: entry.size for entry in archive.entries if entry.kind == "file"}
        #: The C{put} frames, the same for every worker: encoded once, when the pool's id is known.
        self.put_frames: list[bytes] = []
        self.senders: dict[str, _Sender] = {}
        self.frames: FrameCache | None = None

    def _encode_entries(self, pool_id: str) -> list[bytes]:
        """The entries as C{put} frames: bytes, a few per thousand entries, not a dict per entry."""
        frames = []
        pending = None
        for batch in batches(self.archive.entries):
            if pending is not None:
                frames.append(encode({"code": "put", "pool": pool_id, "dest": self.dest, "entries": pending,
                                      "more": True, **self.options}))
            pending = batch
        frames.append(encode({"code": "put", "pool": pool_id, "dest": self.dest, "entries": pending,
                              "more": False, **self.options}))
        return frames

    def start(self, job: Job, link: WorkerLink) -> None:
        """Start the push to one worker (the pool's way of starting a job)."""
        if self.frames is None:
            self.frames = FrameCache(job.pool_id, self.spool, self.archive)
            self.put_frames = self._encode_entries(job.pool_id)
            self.registry[job.pool_id] = self  # its workers' answers find it
        refusal = transfer_refusal(link, "push through it")
        if refusal is not None:
            self.reports.fail(job, refusal)
            return
        sender = self.senders[job.worker_id] = _Sender(self, job, link)
        sender.start()

    def ended(self) -> None:
        """The pool ended: its spool goes."""
        self.senders.clear()
        self.frames = None
        self.put_frames = []
        self.spool.close()


class _Sender:
    """The push to one worker: entries, then the bytes of what it needs, within the window."""

    def __init__(self, push: Push, job: Job, link: Any) -> None:
        self.push = push
        self.job = job
        self.link = link
        self.needed: deque[str] = deque()
        self.told = False  # the worker said everything it needs
        self.current: str | None = None
        self.offset = 0
        self.sent = 0
        self.acked = 0
        self.done = False

    def start(self) -> None:
        for frame in self.push.put_frames:
            self.link.transport.write(frame)

    def need(self, paths: list[str], more: bool) -> None:
        sizes = self.push.sizes
        self.needed.extend(path for path in paths if isinstance(path, str) and path in sizes)
        if not more and not self.told:
            self.told = True
            self.push.reports.job_started(self.job.worker_id, self.job.pool_id, None)
        self.pump()

    def ack(self, written: int) -> None:
        self.acked = max(self.acked, written)
        self.pump()

    def pump(self) -> None:
        """Send what the window allows; after the last byte, say so."""
        frames = self.push.frames
        if self.done or frames is None or self.job.status is not None:
            return
        sizes = self.push.sizes
        while self.sent - self.acked < WINDOW:
            if self.current is None:
                if not self.needed:
                    break
                self.current, self.offset = self.needed.popleft(), 0
            size = sizes[self.current]
            try:
                frame, count = frames.frame(self.current, self.offset, size)
            except (ShortRead, OSError) as e:
                self._stop(f"{self.current}: {e}")
                return
            self.link.transport.write(frame)
            self.offset += count
            self.sent += count
            if self.offset >= size:
                self.current = None
        if self.told and self.current is None and not self.needed:
            self.done = True
            self.link.sendMessage("put_end", pool=self.job.pool_id)

    def _stop(self, why: str) -> None:
        """The spool cannot give what was promised: the worker drops the push, and its job fails."""
        self.done = True
        self.link.kill_job(self.job.pool_id)
        self.push.reports.fail(self.job, f"push stopped: the upload cannot be read: {why}")
