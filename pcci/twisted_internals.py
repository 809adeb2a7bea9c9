"""
Every private Twisted name pcci uses, in one place, and why.

Twisted offers no public way to do three things pcci needs, so this module
reaches inside it, and nowhere else does:

  - B{A job leads its own process group, spawned fast.}  Twisted spawns
    with C{posix_spawnp} when it can and forks otherwise; pcci overrides
    the hooks of both paths (C{Process._trySpawnInsteadOfFork},
    C{_setupChild}, C{_fork}) and plans the child's file descriptors with
    Twisted's own C{_listOpenFDs} and C{_getFileActions}, so every job gets
    a new group (C{setpgroup=0}) at posix_spawn's speed.  Its output pipes
    are read by a C{ProcessReader} of pcci's (C{processReaderFactory}),
    64 KiB at a time rather than 8; a shell's terminal (C{PTYProcess}),
    as long as it has output, up to 64 KiB.
  - B{The reactor keeps monotonic time.}  Its timers live in
    C{_pendingTimedCalls} and C{_newTimedCalls}; moving the reactor to
    C{time.monotonic} rebases those already scheduled.
  - B{The worker reaps only the orphans it inherited.}
    C{process.reapProcessHandlers} lists the children Twisted spawned and
    waits for itself.
  - B{An answer goes out at once.}  A TCP transport buffers each write
    until the reactor next polls, after whatever else the turn does (log
    lines, store work); L{send_now} calls its C{doWrite} (and reads
    C{_writeDisconnecting} and C{_tempDataBuffer}, and does nothing where
    they are missing) to send the bytes someone waits for first, and
    L{write_now} sends a frame straight on the connection's C{socket} when
    nothing waits before it (no C{dataBuffer}, C{_tempDataBuffer} or
    C{TLS}).

  - B{Twisted's own 400 answers carry the API's headers.}  C{HTTPChannel}
    answers a request it cannot parse with a bare C{400} written by
    C{_respondToBadRequestAndDisconnect}; L{http_channel} overrides it.

L{check} runs at import and fails loudly (an ImportError naming the
missing piece) on a Twisted that changed any of them; its test runs in CI.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import heapq
import inspect
import os
import signal
from typing import Any, Callable

from twisted.internet import process as _process
from twisted.internet import tcp as _tcp
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel

#: Each private name, and the parameters pcci passes or expects.
HOOKS: dict[str, tuple[str, ...]] = {
    "Process._trySpawnInsteadOfFork": (
        "path", "uid", "gid", "executable", "args", "environment", "kwargs",
    ),
    "Process._setupChild": (),
    "Process._fork": (),
    "_listOpenFDs": (),
    "_getFileActions": ("fdState", "childToParentFD", "doClose", "doDup2"),
    "reapProcessHandlers": (),
    "Process.processReaderFactory": (),
    "ProcessReader.doRead": (),
    "PTYProcess.doRead": (),
}

#: The reactor's lists of timed calls, rebased when its clock changes.
TIMER_LISTS = ("_pendingTimedCalls", "_newTimedCalls")


def check(module: Any = _process) -> None:
    """
    Fail at once on a Twisted whose private names differ from those pcci
    was written for (see setup.cfg for the versions it is tested with).

    @raise ImportError: naming what is missing or changed.
    """
    for name, parameters in HOOKS.items():
        found: Any = module
        for part in name.split("."):
            found = getattr(found, part, None)
        if found is None:
            raise ImportError(
                f"this Twisted lacks twisted.internet.process.{name}, which pcci"
                " needs: install a Twisted version pcci supports (see setup.cfg)"
            )
        if parameters:
            have = tuple(inspect.signature(found).parameters)
            if have[-len(parameters):] != parameters:
                raise ImportError(
                    f"twisted.internet.process.{name} takes {have}, not the {parameters}"
                    " pcci was written for: install a Twisted version pcci supports"
                )


check()
if not callable(getattr(HTTPChannel, "_respondToBadRequestAndDisconnect", None)):
    raise ImportError(
        "this Twisted lacks HTTPChannel._respondToBadRequestAndDisconnect, which pcci"
        " needs: install a Twisted version pcci supports (see setup.cfg)"
    )


def http_channel(bad_request: bytes) -> type[HTTPChannel]:
    """An HTTP channel that answers a request it cannot parse with C{bad_request}, then closes."""

    class Channel(HTTPChannel):
        def _respondToBadRequestAndDisconnect(self) -> None:
            if self.transport is not None:
                self.transport.write(bad_request)
            self.loseConnection()

    return Channel


#: Bytes read from a child's pipe at once: all that a full pipe holds
#: (Linux's default pipe is 64 KiB), where Twisted reads 8 KiB.
PIPE_READ = 64 * 1024


class WideProcessReader(_process.ProcessReader):
    """A child's output pipe, read C{PIPE_READ} bytes at a time."""

    def doRead(self) -> Any:
        try:
            output = os.read(self.fd, PIPE_READ)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return CONNECTION_LOST
        if not output:
            return CONNECTION_DONE
        self.dataReceived(output)
        return None


class WidePTYProcess(_process.PTYProcess):
    """
    A child in a pseudo-terminal (a shell), its output read as long as
    there is some, up to C{PIPE_READ} bytes at once: a terminal hands out
    a few KiB a read, where Twisted reads once, 8 KiB at most.
    """

    def doRead(self) -> Any:
        chunks: list[bytes] = []
        size = 0
        while size < PIPE_READ:
            try:
                data = os.read(self.fd, PIPE_READ - size)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EINTR) or chunks:
                    break  # what was read goes first; an error comes back at the next read
                return CONNECTION_LOST  # EIO: every process left the terminal
            if not data:
                if chunks:
                    break
                return CONNECTION_DONE
            chunks.append(data)
            size += len(data)
        if chunks and self.proto is not None:
            self.proto.childDataReceived(1, b"".join(chunks))
        return None


class GroupLeaderProcess(_process.Process):
    """
    A child process that leads a new process group from before it execs,
    its output read a full pipe at a time.

    Spawned with C{posix_spawnp(setpgroup=0)}, the fast path Twisted uses
    itself; where that cannot be used, Twisted forks and the child calls
    C{setpgid(0, 0)} before it execs.  Either way the group is certain.
    """

    processReaderFactory = WideProcessReader

    #: The child's pid, kept after Twisted clears C{pid} on reaping it.
    spawned_pid: int

    def _trySpawnInsteadOfFork(
        self,
        path: str | None,
        uid: int | None,
        gid: int | None,
        executable: str,
        args: list[str],
        environment: dict[str, str],
        kwargs: dict[str, Any],
    ) -> bool:
        if path is not None or uid is not None or gid is not None:
            return False
        try:
            file_actions = _spawn_file_actions(kwargs["fdmap"])
        except (AttributeError, KeyError, TypeError):
            return False  # Twisted's internals changed: fork instead
        self.pid = os.posix_spawnp(
            executable,
            args,
            environment,
            file_actions=file_actions,
            setsigdef=_ignored_signals(),
            setpgroup=0,
        )
        self.status = -1
        return True

    def _setupChild(self, *args: Any, **kwargs: Any) -> None:
        os.setpgid(0, 0)
        super()._setupChild(*args, **kwargs)

    def _fork(self, *args: Any, **kwargs: Any) -> None:
        super()._fork(*args, **kwargs)
        # In the parent, before Twisted may reap a child that exited at once.
        pid = self.pid
        assert pid is not None, "a forked process has a pid"
        self.spawned_pid = pid
        try:
            # Also from this side, so the group exists before we may signal it.
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child already exec'ed, in its group


class AdoptedProcess(_process.Process):
    """
    A child this process spawned before it exec'ed a new version of itself
    (the same pid, so still its child): its output pipes, inherited across
    the exec, read again, and its end reaped, as if Twisted had spawned it.
    """

    processReaderFactory = WideProcessReader

    def __init__(self, reactor: Any, pid: int, pipes: dict[int, int], proto: Any) -> None:
        """
        @param pipes: the child's fd to this process's end of its pipe, for
            each output pipe kept (its input was closed before).
        """
        _process._BaseProcess.__init__(self, proto)
        self._reactor = reactor
        self.pid = self.spawned_pid = pid
        self.pipes = {}
        for child_fd, fd in pipes.items():
            os.set_inheritable(fd, False)
            os.set_blocking(fd, False)
            self.pipes[child_fd] = self.processReaderFactory(reactor, self, child_fd, fd)
        proto.makeConnection(self)
        _process.registerReapProcessHandler(pid, self)

    spawned_pid: int


def let_go(process: Any) -> dict[int, int]:
    """
    Stop watching a running child: its output pipes are left open, no longer
    read and kept across an exec (the child's fd to this process's end), and
    its end is no longer reaped here.  The child runs on; see L{AdoptedProcess}.
    """
    kept = {}
    for child_fd, pipe in list(process.pipes.items()):
        pipe.stopReading()
        fd = pipe.fileno()
        os.set_inheritable(fd, True)
        kept[child_fd] = fd
    process.pipes = {}
    if process.pid is not None:
        _process.unregisterReapProcessHandler(process.pid, process)
    return kept


@functools.cache
def _ignored_signals() -> list[int]:
    """
    The signals this process ignores (SIGPIPE, for one), for a job to get
    back at their default.  Read once: the worker never ignores more later.
    """
    return [
        signum
        for signum in range(1, signal.NSIG)
        if signal.getsignal(signum) == signal.SIG_IGN
    ]


def _spawn_file_actions(fdmap: dict[int, int]) -> list[tuple[int, ...]]:
    """
    posix_spawn file actions giving the child the pipes of C{fdmap} (child
    fd to parent fd) and closing the rest, with Twisted's own planner.
    """
    fd_state: list[tuple[int, bool]] = []
    for fd in _process._listOpenFDs():
        try:
            fd_state.append((fd, bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)))
        except OSError:
            continue
    return _process._getFileActions(
        fd_state, fdmap, doClose=os.POSIX_SPAWN_CLOSE, doDup2=os.POSIX_SPAWN_DUP2
    )


def spawned_by_twisted() -> set[int]:
    """The pids of the children Twisted spawned, and reaps itself."""
    return set(_process.reapProcessHandlers)


def rebase_timers(reactor: Any, seconds: Callable[[], float]) -> None:
    """
    Make C{reactor} keep time with C{seconds}, moving the timers already
    scheduled so each still fires after the delay it was given.
    """
    old_now, new_now = reactor.seconds(), seconds()
    reactor.seconds = seconds
    for name in TIMER_LISTS:
        for call in getattr(reactor, name):
            call.time += new_now - old_now
            call.seconds = seconds
    heapq.heapify(reactor._pendingTimedCalls)


def _open_tcp(transport: Any, writes_through: bool = False) -> Any:
    """
    The plain TCP connection under C{transport}'s wrappers, if it is open,
    not closing and has no producer (whose C{resumeProducing} a write could
    call back into); else None.  With C{writes_through}, only under
    wrappers that pass writes on unchanged (a connection limit's), not
    under one that changes them (TLS's C{TLSMemoryBIOProtocol}).
    """
    while isinstance(transport, ProtocolWrapper):
        if writes_through and type(transport).write is not ProtocolWrapper.write:
            return None
        transport = transport.transport
    if (
        isinstance(transport, _tcp.Connection)
        and transport.connected
        and not transport.disconnecting
        and not getattr(transport, "_writeDisconnecting", True)
        and transport.producer is None
    ):
        return transport
    return None


def send_now(transport: Any) -> None:
    """
    Send what C{transport} holds now rather than at the reactor's next poll.

    Only a plain TCP connection (see L{_open_tcp}); anything else is left to
    the reactor.  A send that fails leaves the connection registered for
    writing, so the reactor meets the error at its next poll and closes it
    as it always does.
    """
    connection = _open_tcp(transport)
    if connection is not None and (
        connection.dataBuffer or getattr(connection, "_tempDataBuffer", None)
    ):
        connection.doWrite()


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport} and send it now.  With nothing waiting
    before it on a plain TCP connection, TLS in no layer, straight on the
    socket: one C{send()}, where a write through the transport also has the
    reactor watch the connection for writing and stop again.  What the
    socket does not take (or all of it, elsewhere) goes through the
    transport, then L{send_now}.
    """
    connection = _open_tcp(transport, writes_through=True)
    if (
        connection is not None
        and getattr(connection, "TLS", True) is False
        and not connection.dataBuffer
        and getattr(connection, "_tempDataBuffer", True) == []
    ):
        try:
            sent = connection.socket.send(data)
        except OSError:
            sent = 0  # full (EAGAIN), or broken: the transport's write meets it as usual
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
    send_now(transport)
