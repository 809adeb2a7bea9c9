"""
The worker's side of a fetch (C{pcci fetch}): what is at a path, read in
the file thread and sent to the master within its window.

The worker lists the entries (C{get_entries}), then sends each file's
bytes in pieces of at most L{CHUNK}, each after a C{get_data} frame, never
more than L{WINDOW} past what the master acknowledged (C{get_ack}).  A file
is read as its listing said it was: one that changed meanwhile (size or
time) is reported and fails the job, rather than arriving torn unsaid.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Protocol

from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from pcci.transfer import CHUNK, WINDOW, Entry, batches, file_mode, os_reason, report_end


class TransferLink(Protocol):
    """The connection a fetch's frames go through."""

    def transfer_report(self, pool_id: str, code: str, **fields: Any) -> None: ...

    def send_raw(self, header: dict[str, Any], data: bytes) -> None: ...


class Sender:
    """One fetch of C{path} from this worker, as pool C{pool_id}."""

    def __init__(
        self,
        reactor: Any,
        threads: ThreadPool,
        pool_id: str,
        path: str,
        recursive: bool,
        link: TransferLink,
    ) -> None:
        self.reactor = reactor
        self.threads = threads
        self.pool_id = pool_id
        self.path = path
        self.recursive = recursive
        self.link = link
        self.files: deque[tuple[Entry, str]] = deque()
        self.current: tuple[Entry, str] | None = None
        self.fd: int | None = None
        self.offset = 0
        self.sent = 0
        self.acked = 0
        self.reading = False
        self.changed: list[str] = []
        self.count = 0
        self.ended = False

    def report(self, code: str, **fields: Any) -> None:
        self.link.transfer_report(self.pool_id, code, **fields)

    def start(self) -> None:
        self._in_thread(self._list).addCallback(self._listed)

    def ack(self, read: int) -> None:
        self.acked = max(self.acked, read)
        self._pump()

    def abort(self, reason: str) -> None:
        if not self.ended:
            self._in_thread(self._close)
            self._finish(1, f"pcci: fetch stopped: {reason}\n", reason="killed")

    # In the file thread

    def _in_thread(self, work: Callable[..., Any], *args: Any) -> Any:
        d = deferToThreadPool(self.reactor, self.threads, work, *args)
        d.addErrback(self._failed)
        return d

    def _list(self) -> list[Entry]:
        """The entries at the path, named under its last part; links as links, never followed."""
        path = self.path.rstrip("/") or "/"
        top = os.path.basename(path) or "root"
        info = os.lstat(path)
        if os.path.isdir(path) and not os.path.islink(path):
            if not self.recursive:
                raise OSError(f"{path} is a directory: fetch it with -r")
            entries = [Entry(top, "dir", mode=file_mode(info.st_mode), mtime=info.st_mtime)]
            for directory, names, files in os.walk(path):
                relative = os.path.relpath(directory, path)
                for name in sorted(names) + sorted(files):
                    full = os.path.join(directory, name)
                    entry = _entry(full, os.path.normpath(os.path.join(top, relative, name)))
                    if entry is not None:
                        entries.append(entry)
                names.sort()
        else:
            entry = _entry(path, top)
            if entry is None:
                raise OSError(f"{path}: not a file, directory or link")
            entries = [entry]
        for entry in entries:
            if entry.kind == "file":
                self.files.append((entry, os.path.join(os.path.dirname(path), entry.path)))
        return entries

    def _read(self, entry: Entry, full: str, offset: int) -> bytes:
        if self.fd is None:
            self.fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
        size = min(CHUNK, entry.size - offset)
        data = os.pread(self.fd, size, offset)
        if offset + size >= entry.size:
            info = os.fstat(self.fd)
            self._close()
            if info.st_size != entry.size or info.st_mtime != entry.mtime or len(data) < size:
                self.changed.append(full)
        return data.ljust(size, b"\0")  # a file that shrank: the size listed, marked changed

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # In the reactor

    def _listed(self, entries: list[Entry] | None) -> None:
        if entries is None or self.ended:
            return
        manifest = list(batches(entries))
        for n, batch in enumerate(manifest, 1):
            self.report("get_entries", entries=batch, more=n < len(manifest))
        self.count = len(self.files)
        self._pump()

    def _pump(self) -> None:
        if self.ended or self.reading or self.sent - self.acked >= WINDOW:
            return
        if self.current is None:
            if not self.files:
                self._done()
                return
            self.current, self.offset = self.files.popleft(), 0
            if self.current[0].size == 0:
                self.current = None
                self._pump()
                return
        entry, full = self.current
        self.reading = True
        self._in_thread(self._read, entry, full, self.offset).addCallback(self._got, entry)

    def _got(self, data: bytes | None, entry: Entry) -> None:
        self.reading = False
        if data is None or self.ended:
            return
        header = {"path": entry.path, "offset": self.offset, "size": len(data)}
        self.link.send_raw({"code": "get_data", "pool": self.pool_id, **header}, data)
        self.offset += len(data)
        self.sent += len(data)
        if self.offset >= entry.size:
            self.current = None
        self._pump()

    def _done(self) -> None:
        lines = [f"{self.count} files read ({self.sent} bytes)\n"]
        lines += [f"pcci: {path} changed while it was read\n" for path in self.changed]
        self._finish(1 if self.changed else 0, "".join(lines))

    def _failed(self, failure: Failure) -> None:
        """A read in the file thread failed: the fetch ends with why."""
        self._finish(1, f"pcci: {os_reason(failure.value)}\n")

    def _finish(self, status: int, text: str, reason: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        report_end(self.report, status, text, reason)


def _entry(full: str, name: str) -> Entry | None:
    """What is at C{full}, fetched as C{name}: None for what is neither a file, a directory nor a link."""
    info = os.lstat(full)
    mode, mtime = file_mode(info.st_mode), info.st_mtime
    if os.path.islink(full):
        return Entry(name, "link", mode=mode, mtime=mtime, target=os.readlink(full))
    if os.path.isdir(full):
        return Entry(name, "dir", mode=mode, mtime=mtime)
    if os.path.isfile(full):
        return Entry(name, "file", info.st_size, mode, mtime)
    return None
