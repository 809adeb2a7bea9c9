"""
The worker's side of a push (C{pcci cp}): entries in, files written whole
or not at all.

Every file operation runs in one thread of the worker's (L{FILE_THREAD}),
in the order asked, so the reactor never waits on a disk.  A file is
written to a hidden temporary name beside its destination, checked
against the SHA-256 the master sent, given its mode and time, then
renamed: nobody sees a half-written file under its name.  A file already
there, of the same size and SHA-256, is not sent again.  Each path is
checked on the way: nothing outside the destination is written, whoever
sent the path and whatever links the tree holds.  The worker runs as its
user: what the OS refuses it is refused with the OS's reason.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from pcci.transfer import NEED_PER_FRAME, WINDOW, Entry, UnsafePath, os_reason, report_end

log = Logger()


@dataclass
class _File:
    """A file being written."""

    entry: Entry
    path: str
    temporary: str
    hasher: Any = field(default_factory=hashlib.sha256)
    fd: int | None = None
    #: Bytes received (in the reactor), and written (in the file thread).
    received: int = 0
    written: int = 0
    error: str | None = None


class Receiver:
    """
    One push to this worker, as pool C{pool_id}: entries, then data, then
    the end; C{report(code, **fields)} sends a frame to the master.
    """

    def __init__(
        self,
        reactor: Any,
        threads: ThreadPool,
        pool_id: str,
        dest: str,
        options: dict[str, Any],
        report: Callable[..., None],
    ) -> None:
        self.reactor = reactor
        self.threads = threads
        self.pool_id = pool_id
        self.dest = dest
        self.mkdir = bool(options.get("mkdir"))
        self.mode = options.get("mode") if isinstance(options.get("mode"), int) else None
        self.owner = options.get("owner") if isinstance(options.get("owner"), str) else None
        #: The uid and gid files get (C{owner}), or -1 to leave them.
        self.ids = (-1, -1)
        self.report = report
        self.entries: list[Entry] = []
        self.files: dict[str, _File] = {}
        self.errors: list[str] = []
        self.unchanged = 0
        self.written = 0
        #: Empty files written (they need no bytes, so no put_need).
        self.empty = 0
        self.acked = 0
        #: Bytes received and not yet written.
        self._queued = 0
        self._ended = False
        self._end_asked = False
        self.aborted = False

    # From the master

    def entries_received(self, entries: list[Any], more: bool) -> None:
        try:
            self.entries += [Entry.from_wire(entry) for entry in entries]
        except ValueError as e:
            self._fail(str(e))
            return
        if not more:
            self._in_thread(self._plan).addCallback(self._planned)

    def data(self, path: str, offset: int, data: bytes) -> None:
        target = self.files.get(path)
        if target is None:
            self._fail(f"data for {path!r}, which was not asked for")
            return
        if offset != target.received or target.received + len(data) > target.entry.size:
            self._fail(f"data for {path!r} out of order")
            return
        target.received += len(data)
        self._queued += len(data)
        self._in_thread(self._write, target, data).addCallback(self._wrote, len(data))

    def end(self) -> None:
        self._end_asked = True
        self._maybe_end()

    def abort(self, reason: str) -> None:
        """Killed, or the connection went: stop, and leave no temporary file behind."""
        if self._ended:
            return
        self.aborted = True
        self._in_thread(self._clean)
        self._finish(1, f"pcci: push stopped: {reason}\n", reason="killed")

    # In order, in the file thread

    def _in_thread(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d = deferToThreadPool(self.reactor, self.threads, work, *args)
        d.addErrback(self._failed)
        return d

    def _plan(self) -> list[str]:
        """Make directories and links, find the files needed; their paths."""
        if self.aborted:
            return []
        if self.owner is not None:
            self.ids = _owner_ids(self.owner)
        root, single = self._root()
        base = os.path.realpath(root)
        made: set[str] = set()  # directories known to be there, inside
        needed = []
        for entry in self.entries:
            path = root if single else os.path.join(root, entry.path)
            try:
                parent = os.path.dirname(path)
                if not single and parent not in made:
                    # No link may lead out of the tree; then parents (an
                    # archive may leave them out).
                    _check_inside(base, root, parent)
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                if entry.kind == "dir":
                    try:
                        os.mkdir(path, 0o700)
                        os.chmod(path, entry.mode)  # as sent, whatever the umask
                        os.chown(path, *self.ids)
                    except FileExistsError:
                        if not os.path.isdir(path):
                            raise
                elif entry.kind == "link":
                    temporary = self._temporary(path)
                    os.symlink(entry.target, temporary)
                    os.lchown(temporary, *self.ids)
                    os.replace(temporary, path)
                elif _same(path, entry):
                    self.unchanged += 1
                else:
                    target = _File(entry, path, self._temporary(path))
                    if entry.size == 0:
                        self._open(target)
                        self._close(target)
                        self.empty += 1
                    else:
                        self.files[entry.path] = target
                        needed.append(entry.path)
            except (OSError, UnsafePath) as e:
                self.errors.append(os_reason(e, path))
        return needed

    def _root(self) -> tuple[str, bool]:
        """
        Where the entries go, and whether the only one is written at the
        destination itself (one file to a path that is not a directory).
        """
        dest = self.dest
        single = (
            len(self.entries) == 1
            and self.entries[0].kind == "file"
            and not dest.endswith("/")
            and not os.path.isdir(dest)
        )
        if self.mkdir:
            os.makedirs(os.path.dirname(dest) if single else dest, exist_ok=True)
        elif not single and not os.path.isdir(dest):
            raise OSError(f"{dest}: not a directory (--mkdir makes it)")
        return dest, single

    def _temporary(self, path: str) -> str:
        head, name = os.path.split(path)
        return os.path.join(head, f".{name}.pcci-{os.getpid()}-{self.pool_id[-12:]}.tmp")

    def _mode(self, entry: Entry) -> int:
        return self.mode if self.mode is not None and entry.kind != "dir" else entry.mode

    def _open(self, target: _File) -> None:
        target.fd = os.open(target.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)

    def _write(self, target: _File, data: bytes) -> None:
        if target.error is not None or self.aborted:
            return
        try:
            if target.fd is None:
                self._open(target)
            assert target.fd is not None
            view = memoryview(data)
            while view:
                view = view[os.write(target.fd, view):]
            target.hasher.update(data)
            target.written += len(data)
            if target.written == target.entry.size:
                self._close(target)
        except OSError as e:
            target.error = os_reason(e, target.path)
            self._discard(target)

    def _close(self, target: _File) -> None:
        assert target.fd is not None
        os.close(target.fd)
        target.fd = None
        entry = target.entry
        if target.written and target.hasher.hexdigest() != entry.sha256:
            target.error = f"{target.path}: its SHA-256 differs from what was sent"
            os.unlink(target.temporary)
            return
        os.chown(target.temporary, *self.ids)
        os.chmod(target.temporary, self._mode(entry))
        os.utime(target.temporary, (entry.mtime, entry.mtime))
        os.replace(target.temporary, target.path)

    def _discard(self, target: _File) -> None:
        if target.fd is not None:
            os.close(target.fd)
            target.fd = None
        try:
            os.unlink(target.temporary)
        except OSError:
            pass

    def _clean(self) -> None:
        for target in self.files.values():
            if target.written < target.entry.size:
                self._discard(target)

    # Back in the reactor

    def _planned(self, needed: list[str] | None) -> None:
        if self._ended or needed is None:
            return
        for start in range(0, max(len(needed), 1), NEED_PER_FRAME):
            batch = needed[start:start + NEED_PER_FRAME]
            more = start + NEED_PER_FRAME < len(needed)
            self.report("put_need", paths=batch, more=more)
        if not needed:
            self._maybe_end()

    def _wrote(self, _: Any, size: int) -> None:
        self._queued -= size
        self.written += size
        # Acknowledge in steps, and whenever the queue empties.
        if self.written - self.acked >= WINDOW // 4 or not self._queued:
            self.acked = self.written
            if not self._ended:
                self.report("put_ack", written=self.written)
        self._maybe_end()

    def _maybe_end(self) -> None:
        if self._ended or not self._end_asked or self._queued:
            return
        missing = [t.path for t in self.files.values() if t.written < t.entry.size and t.error is None]
        errors = self.errors + [t.error for t in self.files.values() if t.error is not None]
        errors += [f"{path}: not received whole" for path in missing]
        sent = len(self.files) - sum(1 for t in self.files.values() if t.error is not None) + self.empty
        summary = f"{sent} files written ({self.written} bytes), {self.unchanged} unchanged\n"
        text = summary + "".join(f"pcci: {error}\n" for error in errors)
        self._finish(1 if errors else 0, text)

    def _failed(self, failure: Failure) -> None:
        """A write in the file thread failed: the push ends with why."""
        self._fail(f"pcci: {os_reason(failure.value)}")

    def _fail(self, why: str) -> None:
        if self._ended:
            return
        self.aborted = True
        self._in_thread(self._clean)
        self._finish(1, why if why.endswith("\n") else why + "\n")

    def _finish(self, status: int, text: str, reason: str | None = None) -> None:
        self._ended = True
        report_end(self.report, status, text, reason)


def _owner_ids(owner: str) -> tuple[int, int]:
    """
    The uid and gid of C{USER[:GROUP]} (the user's own group by default).

    @raise OSError: a worker not running as root, or an unknown user or group.
    """
    if os.geteuid() != 0:
        raise OSError(f"--owner {owner}: the worker does not run as root")
    user, _, group = owner.partition(":")
    try:
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError:
        raise OSError(f"--owner {owner}: no such user or group on this worker") from None
    return entry.pw_uid, gid


def _check_inside(base: str, root: str, directory: str) -> None:
    """
    A link in the tree must not carry a write out of it: C{directory},
    links followed, must be C{base} (C{root}, links followed) or under it.
    """
    real = os.path.realpath(directory)
    if real != base and not real.startswith(base.rstrip("/") + "/"):
        raise UnsafePath(f"refused path {directory}: a link leads it out of {root}")


def _same(path: str, entry: Entry) -> bool:
    """Whether the file at C{path} is already what the entry holds."""
    try:
        if os.lstat(path).st_size != entry.size or os.path.islink(path):
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == entry.sha256
