"""
Shells through this master: each session joins a user's side (the
WebSocket of C{GET /workers/<name>/shell}) to a shell on a worker, over
that worker's connection.

Bytes are paced at every hop, so a flood costs no memory: the worker sends
at most L{SHELL_WINDOW} bytes of output ahead of what this master
delivered, and this master acknowledges output only while the user's side
keeps up; input waits (the user's side is not read) while a window of it
is in flight to the worker.  Input and output go different ways on each
connection, so a Ctrl-C passes a flood of output at once.

Every session writes an audit line when it opens and when it ends: who,
which worker, as whom, how long, and the bytes each way.  With a store,
each is kept there with its recording (L{pcci.master.cluster.recordings})
for the pools' retention.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pcci.handshake import SHELLS
from pcci.master.cluster.model import rfc3339
from pcci.master.cluster.recordings import DEFAULT_RECORD_MAX, Recording
from pcci.master.cluster.roster import Roster
from pcci.master.store.base import ShellTable
from pcci.wire import SHELL_WINDOW

audit = Logger(namespace="pcci.audit")
log = Logger()

#: Seconds without a byte either way before a shell is closed, by default.
DEFAULT_IDLE = 3600.0

#: Shells open at once on one worker, at most, by default.
DEFAULT_MAX_SHELLS = 16

#: Seconds between two deletions of the shells past their retention.
EXPIRE_EVERY = 600.0


@dataclass(frozen=True)
class ShellSettings:
    """The master's options for shells (C{--shell-idle}, C{--max-shells}, C{--shell-record-max})."""

    idle: float = DEFAULT_IDLE
    max_per_worker: int = DEFAULT_MAX_SHELLS
    #: Bytes of each shell's recording kept; 0 records none (C{--no-shell-record}).
    record_max: int = DEFAULT_RECORD_MAX


@dataclass(frozen=True)
class ShellOrder:
    """A shell asked for: where, what, as whom, in which window, and by whom."""

    worker: str
    cmd: str = ""
    pty: bool = True
    rows: int = 24
    cols: int = 80
    user: str = ""
    term: str = ""
    #: The token's name (C{admin} without tokens), for the audit log.
    who: str = "admin"

    @property
    def account(self) -> str:
        """Who it runs as, in words."""
        return self.user or "the worker's user"


class ShellRefused(Exception):
    """A shell this master cannot open: an HTTP status, why, and the master that can (if another)."""

    def __init__(self, status: int, message: str, master: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.master = master


class ShellClient(Protocol):
    """The user's side of a session (the WebSocket)."""

    def started(self, pid: int) -> None: ...

    def output(self, stream: str, data: bytes) -> None: ...

    def ended(self, status: int | None, reason: str) -> None:
        """The shell is over: its exit status, or None and why it was lost."""

    def pause_input(self) -> None:
        """Stop reading the user's input: a window of it is on its way to the worker."""

    def resume_input(self) -> None: ...


class ShellLink(Protocol):
    """What a session needs of the worker's connection (L{pcci.master.links.shells})."""

    name: str
    version: int
    master: str | None

    def shell_open(self, shell_id: str, order: ShellOrder) -> None: ...

    def shell_data(self, shell_id: str, data: bytes) -> None: ...

    def shell_eof(self, shell_id: str) -> None: ...

    def shell_resize(self, shell_id: str, rows: int, cols: int) -> None: ...

    def shell_ack(self, shell_id: str, read: int) -> None: ...

    def shell_close(self, shell_id: str) -> None: ...


class ShellSession:
    """One shell: the user's side, the worker's link, the bytes between them."""

    def __init__(self, shell_id: str, order: ShellOrder, link: ShellLink, client: ShellClient, shells: Shells) -> None:
        self.id = shell_id
        self.order = order
        self.link = link
        self.client = client
        self._shells = shells
        self.opened_at = shells.wall()
        self.ended_at: float | None = None
        self._opened = shells.clock.seconds()
        self.pid: int | None = None
        self.status: int | None = None
        self.reason = ""
        self.recording: Recording | None = None
        #: Bytes from the user to the shell, and from the shell to the user.
        self.bytes_in = self.bytes_out = 0
        self._input_acked = 0
        self._input_paused = False
        self._client_paused = False
        self.over = False
        self._last_byte = self._opened
        self._idle: IDelayedCall | None = None

    def to_json(self) -> dict[str, object]:
        recording = self.recording
        return {
            "id": self.id, "worker": self.order.worker, "user": self.order.user, "by": self.order.who,
            "pty": self.order.pty, "cmd": self.order.cmd, "pid": self.pid, "open": not self.over,
            "opened_at": rfc3339(self.opened_at), "ended_at": rfc3339(self.ended_at), "status": self.status,
            "reason": self.reason, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "recorded": None if recording is None else recording.size,
            "truncated": recording is not None and recording.truncated,
        }

    def _active(self) -> None:
        self._last_byte = self._shells.clock.seconds()

    def watch_idle(self) -> None:
        idle = self._shells.settings.idle
        left = self._last_byte + idle - self._shells.clock.seconds()
        if left <= 0:
            self._idle = None
            self.close(f"idle for {idle:g} seconds")
        else:
            self._idle = self._shells.clock.callLater(left, self.watch_idle)

    # From the user

    def input(self, data: bytes) -> None:
        if self.over or not data:
            return
        self._active()
        self.bytes_in += len(data)
        self.link.shell_data(self.id, data)
        if not self._input_paused and self.bytes_in - self._input_acked >= SHELL_WINDOW:
            self._input_paused = True
            self.client.pause_input()

    def end_of_input(self) -> None:
        if not self.over:
            self.link.shell_eof(self.id)

    def resize(self, rows: int, cols: int) -> None:
        if not self.over:
            self.link.shell_resize(self.id, rows, cols)
            if self.recording is not None:
                self.recording.resize(rows, cols)

    def client_paused(self) -> None:
        """The user's side reads slower than the shell prints: stop acknowledging output."""
        self._client_paused = True

    def client_resumed(self) -> None:
        self._client_paused = False
        if not self.over:
            self.link.shell_ack(self.id, self.bytes_out)

    def close(self, why: str) -> None:
        """The user left (or idled out): the shell hangs up; its end is not waited for."""
        if self.over:
            return
        self.link.shell_close(self.id)
        self._end(None, why)

    # From the worker

    def started(self, pid: int) -> None:
        self.pid = pid
        self.client.started(pid)

    def output(self, stream: str, data: bytes) -> None:
        if self.over:
            return
        self._active()
        self.bytes_out += len(data)
        if self.recording is not None:
            self.recording.output(data)
        self.client.output(stream, data)
        if not self._client_paused:
            self.link.shell_ack(self.id, self.bytes_out)

    def input_written(self, written: int) -> None:
        self._input_acked = max(self._input_acked, min(written, self.bytes_in))
        if self._input_paused and self.bytes_in - self._input_acked < SHELL_WINDOW:
            self._input_paused = False
            self.client.resume_input()

    def ended(self, status: int, reason: str) -> None:
        self._end(status, reason)

    def lost(self, why: str) -> None:
        self._end(None, why)

    def _end(self, status: int | None, reason: str) -> None:
        if self.over:
            return
        self.over = True
        self.status, self.reason, self.ended_at = status, reason, self._shells.wall()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        if self.recording is not None:
            self.recording.close()
        self._shells.forget(self)
        audit.info(
            "shell {id} of {who} on {worker} as {user} ended after {seconds:.1f} s ({how}):"
            " {bytes_in} bytes in, {bytes_out} bytes out",
            id=self.id, who=self.order.who, worker=self.order.worker, user=self.order.account,
            seconds=self._shells.clock.seconds() - self._opened,
            how=f"status {status}" if status is not None else reason,
            bytes_in=self.bytes_in, bytes_out=self.bytes_out,
        )
        self.client.ended(status, reason)


class Shells:
    """The shells open through this master, by id."""

    def __init__(
        self,
        clock: IReactorTime,
        wall: Callable[[], float],
        roster: Roster,
        settings: ShellSettings = ShellSettings(),
        table: ShellTable | None = None,
        retention: float = 0.0,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self.roster = roster
        self.settings = settings
        #: Where shells and their recordings are kept (None: nowhere).
        self.table = table
        self.retention = retention
        self.sessions: dict[str, ShellSession] = {}
        self._expiry: IDelayedCall | None = None
        if table is not None:
            self._expiry = clock.callLater(EXPIRE_EVERY, self._expire)

    def _expire(self) -> None:
        assert self.table is not None
        self.table.expire(self.wall() - self.retention).addErrback(
            lambda f: log.warn("old shells not deleted: {why}", why=f.getErrorMessage())
        )
        self._expiry = self.clock.callLater(EXPIRE_EVERY, self._expire)

    def open(self, order: ShellOrder, client: ShellClient) -> ShellSession:
        """
        Open a shell on a worker this master holds.

        @raise ShellRefused: the worker is not here, too old, or has all the shells it may.
        """
        link = self.link(order.worker)
        session = ShellSession(secrets.token_hex(8), order, link, client, self)
        self.sessions[session.id] = session
        if self.table is not None:
            self._stored(self.table.opened(session.id, session.opened_at, order.who, session.to_json()))
            if self.settings.record_max:
                session.recording = Recording(self.clock, self.table, session.id, self.settings.record_max, {
                    "width": order.cols, "height": order.rows, "timestamp": int(session.opened_at),
                    "title": f"{order.who} on {order.worker} as {order.account}",
                    "env": {"TERM": order.term or "xterm-256color"},
                })
        audit.info(
            "shell {id} opened by {who} on {worker} as {user}{what}",
            id=session.id, who=order.who, worker=order.worker, user=order.account,
            what=f": {order.cmd}" if order.cmd else "",
        )
        link.shell_open(session.id, order)
        session.watch_idle()
        return session

    def link(self, worker: str) -> ShellLink:
        """
        The connection a shell on C{worker} would take.

        @raise ShellRefused: there is none it may take.
        """
        link = self.roster.links.get(worker)
        if link is None:
            raise ShellRefused(404, f"worker {worker} is not connected")
        if link.master is not None:
            raise ShellRefused(409, f"worker {worker} is held by master {link.master}: open its shell there",
                               link.master)
        if getattr(link, "version", 0) < SHELLS:
            raise ShellRefused(409, f"worker {worker}'s pcci is too old for shells; upgrade it")
        open_here = sum(1 for s in self.sessions.values() if s.order.worker == worker)
        if open_here >= self.settings.max_per_worker:
            raise ShellRefused(
                429, f"worker {worker} has {open_here} shells open, the most it may (--max-shells)"
            )
        return link  # type: ignore[return-value]

    def of(self, link: object, shell_id: str) -> ShellSession | None:
        """The session C{shell_id}, if it runs over C{link}."""
        session = self.sessions.get(shell_id)
        return session if session is not None and session.link is link else None

    def forget(self, session: ShellSession) -> None:
        """It ended: no longer open, and kept as it ended."""
        self.sessions.pop(session.id, None)
        if self.table is not None:
            assert session.ended_at is not None
            self._stored(self.table.ended(session.id, session.ended_at, session.to_json()))

    def _stored(self, d: Deferred[None]) -> None:
        d.addErrback(lambda f: log.warn("a shell's record was not stored: {why}", why=f.getErrorMessage()))

    def link_lost(self, link: object, name: str) -> None:
        """A worker's connection closed: its sessions end, saying so."""
        for session in [s for s in self.sessions.values() if s.link is link]:
            session.lost(f"worker {name} went away")

    def stop(self, why: str) -> None:
        """The master stops: every session ends, saying so."""
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        for session in list(self.sessions.values()):
            session.close(why)
