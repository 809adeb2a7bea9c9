"""
Running one job's command on a worker: spawning, output, and killing its tree.

The L{JobProtocol} only decodes and forwards; L{JobProcess} holds the policy,
as Buildbot's worker does: the process group, TERM then KILL after a grace
period, a drain timeout for pipes that a background grandchild keeps open,
and output batching.
"""

from __future__ import annotations

import codecs
import fcntl
import os
import shlex
import shutil
import signal
from typing import Any, Callable, Iterable

import psutil
from twisted.internet import process as _process
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.wire import NOT_STARTED, OUTPUT_CHUNK

log = Logger()

#: Seconds to wait for the output pipes to close after the command exited
#: (a background grandchild may hold them open forever).
DRAIN_TIMEOUT = 2.0

#: Seconds to gather output before sending what is there.
FLUSH_DELAY = 0.02


class _GroupLeaderProcess(_process.Process):
    """
    A child process that leads a new process group from before it execs.

    Spawned with C{posix_spawnp(setpgroup=0)}, the fast path Twisted uses
    itself; where that cannot be used, Twisted forks and the child calls
    C{setpgid(0, 0)} before it execs.  Either way the group is certain.
    """

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
        # Restore what this process ignores (SIGPIPE, for one) to the default.
        ignored = [
            signum
            for signum in range(1, signal.NSIG)
            if signal.getsignal(signum) == signal.SIG_IGN
        ]
        self.pid = os.posix_spawnp(
            executable,
            args,
            environment,
            file_actions=file_actions,
            setsigdef=ignored,
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
        self.spawned_pid = self.pid
        try:
            # Also from this side, so the group exists before we may signal it.
            os.setpgid(self.pid, self.pid)
        except OSError:
            pass  # the child already exec'ed, in its group


def _spawn_file_actions(fdmap: dict[int, int]) -> list[tuple[int, ...]]:
    """
    posix_spawn file actions giving the child the pipes of C{fdmap} (child
    fd to parent fd) and closing the rest, with Twisted's own planner.
    """
    fd_state = []
    for fd in _process._listOpenFDs():
        try:
            fd_state.append((fd, fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
        except OSError:
            continue
    return _process._getFileActions(
        fd_state, fdmap, doClose=os.POSIX_SPAWN_CLOSE, doDup2=os.POSIX_SPAWN_DUP2
    )


def exit_status(reason: Failure) -> int:
    """The shell's convention: the exit code, or 128+N when killed by signal N."""
    value = reason.value
    if getattr(value, "signal", None) is not None:
        return 128 + value.signal
    return getattr(value, "exitCode", None) or 0


def job_processes(leader: int | None, pgid: int) -> list[psutil.Process]:
    """
    Every live process of a job: its process group, and the leader's
    descendants that left the group.  Reads /proc; run it in a thread.
    """
    found: dict[int, psutil.Process] = {}
    if leader is not None:
        try:
            parent = psutil.Process(leader)
            found[leader] = parent
            for child in parent.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            pass
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                found.setdefault(proc.pid, proc)
        except OSError:
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


class JobProtocol(ProcessProtocol):
    """Forwards a child's output and exit to its L{JobProcess}."""

    def __init__(self, job: JobProcess) -> None:
        self.job = job

    def outReceived(self, data: bytes) -> None:
        self.job.output_received(data, stderr=False)

    def errReceived(self, data: bytes) -> None:
        self.job.output_received(data, stderr=True)

    def processExited(self, reason: Failure) -> None:
        self.job.process_exited(reason)

    def processEnded(self, reason: Failure) -> None:
        self.job.process_ended(reason)


class JobProcess:
    """
    One command run as the leader of its own process group.

    Reports through three callbacks: C{on_started(pid)} as soon as the
    process exists, C{on_output(text)} with chunks of at most
    L{OUTPUT_CHUNK} characters (stdout and stderr in arrival order, decoded
    as UTF-8 with replacement), and C{on_ended(status)} exactly once.
    """

    def __init__(
        self,
        reactor: Any,
        cmd: str,
        *,
        on_started: Callable[[int], None],
        on_output: Callable[[str], None],
        on_ended: Callable[[int], None],
        kill_grace: float = 5.0,
        env: dict[str, str] | None = None,
        drain_timeout: float = DRAIN_TIMEOUT,
        list_processes: Callable[
            [int | None, int], Deferred[list[psutil.Process]]
        ] = lambda leader, pgid: deferToThread(job_processes, leader, pgid),
    ) -> None:
        self._reactor = reactor
        self.cmd = cmd
        self._on_started = on_started
        self._on_output = on_output
        self._on_ended = on_ended
        self._kill_grace = kill_grace
        self._env = dict(os.environ if env is None else env)
        self._drain_timeout = drain_timeout
        self._list_processes = list_processes
        self._decoders = {
            False: codecs.getincrementaldecoder("utf-8")(errors="replace"),
            True: codecs.getincrementaldecoder("utf-8")(errors="replace"),
        }
        self._pending: list[str] = []
        self._pending_size = 0
        self._flush_call: IDelayedCall | None = None
        self._drain_call: IDelayedCall | None = None
        self._kill_call: IDelayedCall | None = None
        self._transport: Any = None
        self.pid: int | None = None
        self.status: int | None = None
        self.exited = False
        self.ended = False
        self.killing = False
        self._paused = False
        #: Processes of this job seen while killing it, by pid.
        self._known: dict[int, psutil.Process] = {}

    def start(self) -> None:
        """Spawn the command; a command that cannot start ends with 127."""
        try:
            argv = shlex.split(self.cmd)
        except ValueError as e:
            self._not_started(f"cannot parse command: {e}")
            return
        if not argv:
            self._not_started("empty command")
            return
        executable = shutil.which(argv[0], path=self._env.get("PATH", os.defpath))
        if executable is None:
            self._not_started(f"{argv[0]}: command not found")
            return
        try:
            self._transport = _GroupLeaderProcess(
                self._reactor, executable, argv, self._env, None, JobProtocol(self)
            )
        except OSError as e:
            self._not_started(f"{argv[0]}: cannot start: {e}")
            return
        # The child ran setpgid(0, 0) before exec, or died trying: the job
        # leads a process group of its own whose id is its pid.
        self.pid = self._transport.spawned_pid
        if self._paused:
            self._transport.pauseProducing()
        self._on_started(self.pid)

    def _not_started(self, reason: str) -> None:
        self.ended = True
        self.status = NOT_STARTED
        self._on_output(f"pcci: {reason}\n")
        self._on_ended(NOT_STARTED)

    # Output

    def output_received(self, data: bytes, stderr: bool) -> None:
        text = self._decoders[stderr].decode(data)
        if text:
            self._pending.append(text)
            self._pending_size += len(text)
        if self._pending_size >= OUTPUT_CHUNK:
            self._flush()
        elif self._flush_call is None and self._pending:
            self._flush_call = self._reactor.callLater(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending = []
        self._pending_size = 0
        for start in range(0, len(text), OUTPUT_CHUNK):
            self._on_output(text[start : start + OUTPUT_CHUNK])

    def pause(self) -> None:
        """Stop reading output: the connection to the master is full."""
        self._paused = True
        if self._transport is not None and not self.ended:
            self._transport.pauseProducing()

    def resume(self) -> None:
        self._paused = False
        if self._transport is not None and not self.ended:
            self._transport.resumeProducing()

    # Exit

    def process_exited(self, reason: Failure) -> None:
        self.exited = True
        self.status = exit_status(reason)
        self._drain_call = self._reactor.callLater(
            self._drain_timeout, self._stop_draining
        )

    def _stop_draining(self) -> None:
        """The command exited but its pipes stay open: stop reading them."""
        self._drain_call = None
        self.output_received(
            b"\npcci: the command exited but a background process still holds"
            b" its output; output after this point is not collected\n",
            stderr=True,
        )
        for fd in (1, 2):
            self._transport.closeChildFD(fd)

    def process_ended(self, reason: Failure) -> None:
        if self.ended:
            return
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        self.ended = True
        if self.status is None:
            self.status = exit_status(reason)
        for decoder in self._decoders.values():
            tail = decoder.decode(b"", final=True)
            if tail:
                self._pending.append(tail)
        self._flush()
        self._on_ended(self.status)

    # Killing

    def kill(self) -> None:
        """SIGTERM the whole tree now and SIGKILL whatever is left after the grace."""
        if self.pid is None or self.killing:
            return
        self.killing = True
        self._signal_tree(signal.SIGTERM)
        self._kill_call = self._reactor.callLater(
            self._kill_grace, self._signal_tree, signal.SIGKILL
        )

    def _signal_tree(self, signum: int) -> None:
        """
        List the job's processes first (the leader's descendants can only be
        found while it lives), then signal them and the group.
        """
        if signum == signal.SIGKILL:
            self._kill_call = None
        leader = None if self.exited else self.pid
        d = self._list_processes(leader, self.pid)
        d.addCallback(self._signal_found, signum)
        d.addErrback(lambda f: log.failure("cannot list job processes", f))

    def _signal_found(self, processes: Iterable[psutil.Process], signum: int) -> None:
        for proc in processes:
            self._known.setdefault(proc.pid, proc)
        if not self.exited and self.pid != os.getpgrp():
            # The leader is not reaped, so the group id is still ours.
            _send(os.killpg, self.pid, signum)
        for proc in self._known.values():
            try:
                proc.send_signal(signum)  # psutil checks the pid was not reused
            except psutil.Error:
                pass

    def stop(self) -> None:
        """Cancel pending timers: the worker is shutting down."""
        for call in (self._flush_call, self._drain_call, self._kill_call):
            if call is not None and call.active():
                call.cancel()


def _send(function: Callable[..., Any], *args: Any) -> None:
    try:
        function(*args)
    except (OSError, _process.ProcessExitedAlready):
        pass
