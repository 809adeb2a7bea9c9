"""
Running one job's command on a worker: spawning, output, and killing its tree.

The L{JobProtocol} only forwards; L{JobProcess} holds the policy,
as Buildbot's worker does: the process group, TERM then KILL after a grace
period, a backup timer if the end never comes, a drain timeout for pipes
that a background grandchild keeps open, and output batching.

A job is its whole tree: the processes of its group, the leader's
descendants, and every process carrying its marker in the environment
(C{PCCI_JOB}), which finds the daemonised ones that the worker, a child
subreaper on Linux, inherits.  What is left of the tree when the command
has exited is killed: a job leaves nothing running behind it.
"""

from __future__ import annotations

import codecs
import functools
import os
import shlex
import shutil
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import psutil
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.output import on_own_line
from pcci.twisted_internals import GroupLeaderProcess
from pcci.wire import (
    END_CANCELLED,
    END_KILLED,
    END_NOT_STARTED,
    END_TIMED_OUT,
    OUTPUT_CHUNK,
    STATUS_NOT_STARTED,
    STATUS_TIMED_OUT,
)
from pcci.worker.handover import HandsOver
from pcci.worker.reaper import MARKER, find_processes, marker_of, reap_orphans

log = Logger()

#: Seconds to wait for the output pipes to close after the command exited
#: (a background grandchild may hold them open forever).
DRAIN_TIMEOUT = 2.0

#: Seconds to gather output before sending what is there.
FLUSH_DELAY = 0.02

#: Seconds between looks at whether a finished job's leftovers are gone.
LEFTOVER_POLL = 0.05

#: Seconds after SIGKILL before a job whose end never came is ended anyway
#: (a process stuck in the kernel, or pipes held by one).
BACKUP_TIMEOUT = 10.0

def exit_status(reason: Failure) -> int:
    """The shell's convention: the exit code, or 128+N when killed by signal N."""
    signal = getattr(reason.value, "signal", None)
    if signal is not None:
        return 128 + int(signal)
    return getattr(reason.value, "exitCode", None) or 0


def job_processes(leader: int | None, pgid: int, marker: str) -> list[psutil.Process]:
    """
    Every live process of a job: its process group, the leader's
    descendants that left the group, and the worker's descendants that
    carry the job's C{marker}.  Reads /proc; run it in a thread.
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
    for proc in find_processes({pgid}, marker):
        found.setdefault(proc.pid, proc)
    found.pop(os.getpid(), None)
    return list(found.values())


def group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group C{pgid}."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobProtocol(ProcessProtocol):
    """Forwards a child's output and exit to its L{JobProcess}."""

    def __init__(self, job: JobProcess) -> None:
        self.job = job

    def outReceived(self, data: bytes) -> None:
        self.job.output_received(data, "stdout")

    def errReceived(self, data: bytes) -> None:
        self.job.output_received(data, "stderr")

    def processExited(self, reason: Failure) -> None:
        self.job.process_exited(reason)

    def processEnded(self, reason: Failure) -> None:
        self.job.process_ended(reason)


class JobReporter(Protocol):
    """Who hears of a job: as soon as its process exists, each piece of output, its end."""

    def started(self, pid: int) -> None: ...

    def output(self, text: str, stream: str) -> None:
        """At most L{OUTPUT_CHUNK} characters of one stream, decoded as UTF-8 with replacement."""

    def ended(self, status: int, reason: str | None) -> None:
        """Exactly once; C{reason} says why when it was not just the command exiting."""


@dataclass(frozen=True)
class Command:
    """What a job runs, and how."""

    cmd: str
    #: Its environment (None: the worker's).
    env: dict[str, str] | None = None
    #: Set in its environment (C{PCCI_JOB}), to find its processes by.
    marker: str = ""
    #: Its standard input, then closed.
    stdin: bytes = b""
    cwd: str | None = None
    #: Seconds it may run before it is killed (ending with status 124).
    timeout: float | None = None


def _list_processes(leader: int | None, pgid: int, marker: str) -> Deferred[list[psutil.Process]]:
    return deferToThread(job_processes, leader, pgid, marker)


@dataclass(frozen=True)
class KillPolicy:
    """How a job's processes are killed and waited for."""

    #: Seconds between SIGTERM and SIGKILL.
    kill_grace: float = 5.0
    #: Seconds the output of a command that exited is read before its pipes are closed.
    drain_timeout: float = DRAIN_TIMEOUT
    #: The job's processes (in a thread: a psutil scan can stall).
    list_processes: Callable[[int | None, int, str], Deferred[list[psutil.Process]]] = _list_processes
    #: Whether processes of the job are left (None: L{leftovers_of}).
    has_leftovers: Callable[[int, str], bool] | None = None


class OutputBatches:
    """
    A job's output on its way to its reporter: decoded as UTF-8 (with
    replacement), gathered for L{FLUSH_DELAY} or until L{OUTPUT_CHUNK}
    characters, consecutive pieces of one stream sent together.
    """

    def __init__(self, reactor: Any, reporter: JobReporter) -> None:
        self._reactor = reactor
        self._reporter = reporter
        self._decoders = {
            stream: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for stream in ("stdout", "stderr")
        }
        self._pending: list[tuple[str, str]] = []
        #: The latest text of either stream, for notes to start on their own line.
        self._last_text = ""
        self._pending_size = 0
        self._flush_call: IDelayedCall | None = None

    def received(self, data: bytes, stream: str) -> None:
        self.queue(stream, self._decoders[stream].decode(data))

    def note(self, text: str) -> None:
        """A note of pcci's on stderr, on a line of its own."""
        self.queue("stderr", on_own_line(text, self._last_text))

    def partial(self) -> dict[str, str]:
        """The bytes of a character cut between two reads, by stream (hex), for the worker's next version."""
        return {stream: decoder.getstate()[0].hex() for stream, decoder in self._decoders.items()
                if decoder.getstate()[0]}

    def carry_on(self, partial: dict[str, str]) -> None:
        """Go on from where another version's reading stopped (L{partial})."""
        for stream, held in partial.items():
            if stream in self._decoders:
                self._decoders[stream].setstate((bytes.fromhex(held), 0))

    def finish(self) -> None:
        """The streams are closed: what their decoders hold goes too."""
        for stream, decoder in self._decoders.items():
            self.queue(stream, decoder.decode(b"", final=True))
        self.flush()

    def queue(self, stream: str, text: str) -> None:
        if text:
            self._pending.append((stream, text))
            self._pending_size += len(text)
            self._last_text = text
        if self._pending_size >= OUTPUT_CHUNK:
            self.flush()
        elif self._flush_call is None and self._pending:
            self._flush_call = self._reactor.callLater(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        pending, self._pending, self._pending_size = self._pending, [], 0
        runs: list[tuple[str, list[str]]] = []
        for stream, text in pending:
            if runs and runs[-1][0] == stream:
                runs[-1][1].append(text)
            else:
                runs.append((stream, [text]))
        for stream, texts in runs:
            text = "".join(texts)
            for start in range(0, len(text), OUTPUT_CHUNK):
                self._reporter.output(text[start : start + OUTPUT_CHUNK], stream)


class JobProcess(HandsOver):
    """
    One command run as the leader of its own process group, telling its
    C{reporter} (see L{JobReporter}).

    Its standard input is the command's C{stdin}, then closed: a command
    that reads it never waits for a terminal that is not there.  It runs in
    C{cwd} (the worker's own directory by default) and, given a C{timeout},
    is killed when it has run that long, ending with status 124.  It is
    killed as its L{KillPolicy} says.
    """

    def __init__(
        self, reactor: Any, command: Command, reporter: JobReporter, policy: KillPolicy | None = None
    ) -> None:
        self._reactor = reactor
        self.cmd = command.cmd
        self._reporter = reporter
        self._policy = policy = policy or KillPolicy()
        self._has_leftovers = policy.has_leftovers or leftovers_of
        self._env = dict(os.environ if command.env is None else command.env)
        self.marker = command.marker
        if self.marker:
            self._env[MARKER] = self.marker
        self._stdin = command.stdin
        self.cwd = command.cwd
        self.timeout = command.timeout
        self._timeout_call: IDelayedCall | None = None
        self._output = OutputBatches(reactor, reporter)
        self._drain_call: IDelayedCall | None = None
        self._kill_call: IDelayedCall | None = None
        self._backup_call: IDelayedCall | None = None
        self._poll_call: IDelayedCall | None = None
        self._transport: Any = None
        self.pid: int | None = None
        self.status: int | None = None
        self.started = False
        self.exited = False
        self.ended = False
        self.killing = False
        #: Why this job is being killed, for its end: killed, timed_out.
        self.kill_reason: str | None = None
        self._paused = False
        #: Processes of this job seen while killing it, by pid.
        self._known: dict[int, psutil.Process] = {}

    def start(self) -> None:
        """Spawn the command; a command that cannot start ends with 127."""
        self.started = True
        try:
            argv = shlex.split(self.cmd)
        except ValueError as e:
            self._not_started(f"cannot parse command: {e}")
            return
        if not argv:
            self._not_started("empty command")
            return
        if self.cwd is not None:
            why = None
            if not os.path.isdir(self.cwd):
                why = "no such directory"
            elif not os.access(self.cwd, os.X_OK):
                why = "permission denied"
            if why is not None:
                self._not_started(f"cwd {self.cwd}: {why}")
                return
        program = argv[0]
        if self.cwd is not None and "/" in program:
            program = os.path.join(self.cwd, program)
        executable = find_program(program, self._env.get("PATH", os.defpath))
        if executable is None:
            self._not_started(f"{argv[0]}: command not found")
            return
        # Without input, the child reads /dev/null: one pipe fewer to make,
        # watch and close (a tenth of a millisecond of a short job).
        fds = None if self._stdin else {0: null_input(), 1: "r", 2: "r"}
        try:
            self._transport = GroupLeaderProcess(
                self._reactor, executable, argv, self._env, self.cwd, self.process_protocol(), childFDs=fds
            )
        except OSError as e:
            self._not_started(f"{argv[0]}: cannot start: {e}")
            return
        # The child ran setpgid(0, 0) before exec, or died trying: the job
        # leads a process group of its own whose id is its pid.
        self.pid = self._transport.spawned_pid
        if self._stdin:
            self._transport.write(self._stdin)
        self._transport.closeStdin()
        if self._paused:
            self._transport.pauseProducing()
        self.start_timeout()
        self._reporter.started(self.pid)

    def process_protocol(self) -> JobProtocol:
        return JobProtocol(self)

    def start_timeout(self) -> None:
        """From now on the job has C{timeout} seconds to end."""
        if self.timeout is not None:
            self._timeout_call = self._reactor.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timeout_call = None
        if self.exited or self.killing:
            return  # it ended in time; only its leftovers are going
        self._output.note(f"pcci: timed out after {self.timeout:g} s: killing the job\n")
        self._output.flush()
        self.kill(END_TIMED_OUT)

    def _not_started(self, reason: str) -> None:
        self.ended = True
        self.status = STATUS_NOT_STARTED
        self._reporter.output(f"pcci: {reason}\n", "stderr")
        self._reporter.ended(STATUS_NOT_STARTED, END_NOT_STARTED)

    def cancel(self) -> None:
        """End a job that was never started."""
        if self.started or self.ended:
            return
        self.ended = True
        self._reporter.ended(-1, END_CANCELLED)

    # Output

    def output_received(self, data: bytes, stream: str) -> None:
        self._output.received(data, stream)

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
            self._policy.drain_timeout, self._stop_draining
        )

    def _stop_draining(self) -> None:
        """The command exited but its pipes stay open: stop reading them."""
        self._drain_call = None
        self._output.note(
            "pcci: the command exited but a background process still holds"
            " its output: it is killed with the job\n"
        )
        for fd in (1, 2):
            self._transport.closeChildFD(fd)

    def process_ended(self, reason: Failure) -> None:
        if self.ended:
            return
        self._cancel(self._drain_call)
        self._drain_call = None
        if self.status is None:
            self.status = exit_status(reason)
        self._output.finish()
        self._watch_leftovers()

    def _watch_leftovers(self) -> None:
        """
        The command is gone: end the job as soon as its tree is gone too.
        What the command left running is killed like a killed job's tree.
        """
        self._poll_call = None
        if self.ended:
            return
        assert self.pid is not None, "the job was started"
        if not self._has_leftovers(self.pid, self.marker):
            self._end()
            return
        if not self.killing:
            self._output.note("pcci: killing the processes the command left running\n")
            self._output.flush()
            self._start_killing(None)
        self._poll_call = self._reactor.callLater(LEFTOVER_POLL, self._watch_leftovers)

    def _end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._cancel_timers()
        self._output.flush()
        if self.kill_reason == END_TIMED_OUT:
            self.status = STATUS_TIMED_OUT
        self._reporter.ended(self.status if self.status is not None else -1, self.kill_reason)

    def _cancel_timers(self) -> None:
        """The job has ended: none of its timers may fire after it."""
        for call in (self._kill_call, self._backup_call, self._poll_call, self._timeout_call, self._drain_call):
            self._cancel(call)
        self._kill_call = self._backup_call = self._poll_call = self._timeout_call = self._drain_call = None
        self._output.flush()  # and its timer with it

    # Killing

    def kill(self, reason: str = END_KILLED) -> None:
        """SIGTERM the whole tree now and SIGKILL whatever is left after the grace."""
        if not self.started:
            self.cancel()
            return
        if self.pid is None or self.killing or self.ended:
            return
        self._start_killing(reason)

    def _start_killing(self, reason: str | None) -> None:
        self.killing = True
        self.kill_reason = reason
        self._signal_tree(signal.SIGTERM)
        self._kill_call = self._reactor.callLater(self._policy.kill_grace, self._sigkill)

    def _sigkill(self) -> None:
        self._kill_call = None
        self._signal_tree(signal.SIGKILL)
        # Should the end never come (a process stuck in the kernel), end anyway.
        self._backup_call = self._reactor.callLater(BACKUP_TIMEOUT, self._give_up)

    def _give_up(self) -> None:
        self._backup_call = None
        log.warn(
            "job {cmd!r} did not end {timeout} s after SIGKILL: ending it anyway",
            cmd=self.cmd,
            timeout=BACKUP_TIMEOUT,
        )
        if self.status is None:
            self.status = 128 + signal.SIGKILL
        if self._transport is not None:
            for fd in (0, 1, 2):
                self._transport.closeChildFD(fd)
        self._end()

    def _signal_tree(self, signum: int) -> Deferred[None]:
        """
        List the job's processes first (the leader's descendants can only be
        found while it lives), then signal them and the group.
        """
        leader = None if self.exited else self.pid
        assert self.pid is not None
        d = self._policy.list_processes(leader, self.pid, self.marker)
        signalled = d.addCallback(self._signal_found, signum)
        return signalled.addErrback(lambda f: log.failure("cannot list job processes", f))

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

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()


#: Programs found on a PATH, by name and PATH.  Like a shell's hash table:
#: each job's start checks its program is still there (one system call)
#: rather than search the PATH again.
_found: dict[tuple[str, str], str] = {}
FOUND_KEPT = 1024


@functools.cache
def null_input() -> int:
    """/dev/null, open for reading, for the jobs with no input (open once, kept)."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def find_program(program: str, path: str) -> str | None:
    """C{program}'s executable file on C{path}, or None."""
    key = (program, path)
    found = _found.get(key)
    if found is not None and os.access(found, os.X_OK):
        return found
    found = shutil.which(program, path=path)
    if found is None:
        _found.pop(key, None)
    else:
        if len(_found) >= FOUND_KEPT:
            _found.clear()
        _found[key] = found
    return found


def leftovers_of(pgid: int | None, marker: str) -> bool:
    """
    Whether a job whose command ended left processes behind: its group still
    has members, or a child the worker inherited carries its marker.  Cheap
    enough to ask at every job's end.
    """
    inherited = reap_orphans()
    if pgid is not None and pgid != os.getpgrp() and group_alive(pgid):
        return True
    return bool(marker) and any(marker_of(pid) == marker for pid in inherited)


def _send(function: Callable[..., Any], *args: Any) -> None:
    try:
        function(*args)
    except (OSError, ProcessExitedAlready):
        pass
