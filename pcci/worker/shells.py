"""
Shells on a worker: a login shell, or one command, for C{pcci shell}
through the master (C{docs/protocol.md}, "A shell").

With a terminal, the shell runs in a pseudo-terminal of the size the user's
window has, as the session leader of its own session, so Ctrl-C, Ctrl-Z and
a resize reach what runs in it.  Without one, it runs with pipes, as
C{ssh host cmd} does, its two output streams apart.

Output is paced by the master: at most L{SHELL_WINDOW} bytes sent and not
yet delivered, then the terminal is not read until C{shell_ack} says the
user's side took them.  Input is acknowledged once the terminal took it.
Hanging up sends SIGHUP to the shell's process group, and SIGKILL after the
grace period to what is left of it.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import signal
import struct
import termios
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.twisted_internals import GroupLeaderProcess, WidePTYProcess
from pcci.wire import MAX_SHELL_DATA, SHELL_WINDOW, STATUS_NOT_STARTED, FramedJSONProtocol
from pcci.worker.process import exit_status

log = Logger()

#: Seconds to read what is left on the terminal after the shell exited (a
#: background process may hold it open for ever).
DRAIN_TIMEOUT = 0.5

#: The search path of a shell run as another user than the worker's.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: The worker's environment a shell inherits: language and time zone.
KEPT_ENVIRONMENT = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")


class ShellError(Exception):
    """A shell that cannot start: why, in a sentence for the user."""


class ShellLink(Protocol):
    """What a shell tells the master (the worker's connection)."""

    def shell_started(self, shell_id: str, pid: int) -> None: ...

    def shell_output(self, shell_id: str, stream: str, data: bytes) -> None: ...

    def shell_ack(self, shell_id: str, written: int) -> None: ...

    def shell_ended(self, shell_id: str, status: int, reason: str) -> None: ...


@dataclass(frozen=True)
class ShellRequest:
    """A C{shell_open}: what to run, as whom, and the window it shows in."""

    id: str
    #: A command for the user's shell (C{shell -c CMD}); "" for a login shell.
    cmd: str = ""
    pty: bool = True
    rows: int = 24
    cols: int = 80
    #: Who runs it: "" for the worker's own user.
    user: str = ""
    term: str = ""


def account(user: str) -> pwd.struct_passwd:
    """
    The account a shell runs as: C{user}, or the worker's own.

    @raise ShellError: no such user, or one a worker not run by root cannot become.
    """
    me = pwd.getpwuid(os.getuid())
    if not user or user == me.pw_name:
        return me
    try:
        wanted = pwd.getpwnam(user)
    except KeyError:
        raise ShellError(f"no user {user} on this worker") from None
    if os.getuid() != 0 and wanted.pw_uid != os.getuid():
        raise ShellError(f"the worker runs as {me.pw_name}, not root: it cannot open a shell as {user}")
    return wanted


def environment(who: pwd.struct_passwd, shell: str, term: str, shell_id: str) -> dict[str, str]:
    """A login's environment, as sshd makes it: the account's, the terminal's, the language."""
    same = who.pw_uid == os.getuid()
    env = {
        "HOME": who.pw_dir,
        "USER": who.pw_name,
        "LOGNAME": who.pw_name,
        "SHELL": shell,
        "PATH": os.environ.get("PATH", DEFAULT_PATH) if same else DEFAULT_PATH,
        "TERM": term,
        "PCCI_SHELL": shell_id,
    }
    env.update({k: os.environ[k] for k in KEPT_ENVIRONMENT if k in os.environ})
    return env


def set_window(fd: int, rows: int, cols: int) -> None:
    """Give the terminal of C{fd} this size; its foreground processes get SIGWINCH."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ShellProtocol(ProcessProtocol):
    """Forwards a shell's output and end to its L{Shell}."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.shell.output_received("stderr" if childFD == 2 else "stdout", data)

    def processExited(self, reason: Failure) -> None:
        self.shell.process_exited(reason)

    def processEnded(self, reason: Failure) -> None:
        self.shell.process_ended(reason)


class _InputPace:
    """The terminal's write buffer as a consumer's producer: full, the master's input waits for its ack."""

    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def pauseProducing(self) -> None:
        self.shell.input_blocked = True

    def resumeProducing(self) -> None:
        self.shell.input_blocked = False
        self.shell.ack_input()

    def stopProducing(self) -> None:
        pass


class Shell:
    """One shell: its process, its terminal (or pipes), and its flow of bytes both ways."""

    def __init__(
        self, reactor: Any, request: ShellRequest, link: ShellLink, grace: float, gone: Callable[[], None]
    ) -> None:
        self._reactor = reactor
        self.request = request
        self.id = request.id
        self._link = link
        self._grace = grace
        self._gone = gone
        self._transport: Any = None
        self.pid: int | None = None
        self.sent = self.delivered = 0
        self.written = self.acked_written = 0
        self.input_blocked = False
        self._reading_paused = False
        self._drain: IDelayedCall | None = None
        self._kill: IDelayedCall | None = None
        self._status: int | None = None
        self._reason = ""
        self.over = False

    def start(self) -> None:
        """
        Spawn the shell and say so (C{shell_started}).

        @raise ShellError: it cannot start; nothing is left running.
        """
        request = self.request
        who = account(request.user)
        shell = who.pw_shell if who.pw_shell and os.access(who.pw_shell, os.X_OK) else "/bin/sh"
        name = os.path.basename(shell)
        # As login(1) and sshd do: a login shell's argv[0] begins with "-".
        argv = [name, "-c", request.cmd] if request.cmd else ["-" + name]
        term = request.term or ("xterm-256color" if request.pty else "dumb")
        env = environment(who, shell, term, self.id)
        home = who.pw_dir if os.path.isdir(who.pw_dir) else "/"
        ids: dict[str, Any] = {}
        if who.pw_uid != os.getuid():
            ids = {"uid": who.pw_uid, "gid": who.pw_gid}
        protocol = ShellProtocol(self)
        try:
            if request.pty:
                self._transport = self._spawn_in_terminal(protocol, shell, argv, env, home, ids)
                self.pid = self._transport.pid
            else:
                self._transport = GroupLeaderProcess(self._reactor, shell, argv, env, home, protocol, **ids)
                self.pid = self._transport.spawned_pid
        except OSError as e:
            raise ShellError(f"{shell}: cannot start: {e}") from None
        self._transport.registerProducer(_InputPace(self), True)
        assert self.pid is not None
        self._link.shell_started(self.id, self.pid)

    def _spawn_in_terminal(
        self, protocol: ShellProtocol, shell: str, argv: list[str], env: dict[str, str], home: str, ids: dict[str, Any]
    ) -> Any:
        master, slave = os.openpty()
        try:
            # Sized before the shell starts: it reads the size once, first thing.
            set_window(slave, self.request.rows, self.request.cols)
            return WidePTYProcess(
                self._reactor, shell, argv, env, home, protocol, usePTY=(master, slave, os.ttyname(slave)), **ids
            )
        except BaseException:
            os.close(master)
            os.close(slave)
            raise

    # From the master

    def input(self, data: bytes) -> None:
        if self.over:
            return
        self._transport.write(data)
        self.written += len(data)
        self.ack_input()

    def ack_input(self) -> None:
        """Tell the master what the shell took, unless its terminal is full."""
        if not self.input_blocked and not self.over and self.acked_written < self.written:
            self.acked_written = self.written
            self._link.shell_ack(self.id, self.written)

    def end_of_input(self) -> None:
        """No more input: standard input closes (with a terminal, Ctrl-D is the user's to type)."""
        if not self.over and not self.request.pty:
            # A pipe with a producer closes only once the producer is gone.
            self._transport.unregisterProducer()
            self.input_blocked = False
            self._transport.closeStdin()

    def resize(self, rows: int, cols: int) -> None:
        if self.request.pty and not self.over and self._transport.fd is not None:
            try:
                set_window(self._transport.fd, rows, cols)
            except OSError:
                pass  # the terminal closed meanwhile: its end is on its way

    def delivered_to(self, read: int) -> None:
        """The master delivered C{read} bytes of output: read the terminal again if they were too many."""
        self.delivered = max(self.delivered, min(read, self.sent))
        # Half the window delivered before reading again: not a pause and a resume every piece.
        if self._reading_paused and self.sent - self.delivered <= SHELL_WINDOW // 2:
            self._reading_paused = False
            self._transport.resumeProducing()

    def hang_up(self, reason: str) -> None:
        """The user left: SIGHUP to the shell's group, SIGKILL after the grace period."""
        if self.over or self._kill is not None:
            return
        self._reason = reason
        self._signal(signal.SIGHUP)
        self._signal(signal.SIGCONT)  # a stopped job must wake to hear it
        self._kill = self._reactor.callLater(self._grace, self._killed)

    def _killed(self) -> None:
        self._kill = None
        self._signal(signal.SIGKILL)
        # Its end comes as the process is reaped; one held open by a stuck
        # process ends here, after another grace period.
        self._kill = self._reactor.callLater(self._grace, self._end)

    def _signal(self, signum: int) -> None:
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signum)
        except OSError:
            pass  # none left in the group

    # From the shell

    def output_received(self, stream: str, data: bytes) -> None:
        for start in range(0, len(data), MAX_SHELL_DATA):
            piece = data[start:start + MAX_SHELL_DATA]
            self.sent += len(piece)
            self._link.shell_output(self.id, stream, piece)
        if not self._reading_paused and self.sent - self.delivered >= SHELL_WINDOW:
            self._reading_paused = True
            self._transport.pauseProducing()

    def process_exited(self, reason: Failure) -> None:
        """The shell is gone; what is still on its terminal is read for a moment, then it ends."""
        self._status = exit_status(reason)
        if self._drain is None and not self.over:
            self._drain = self._reactor.callLater(DRAIN_TIMEOUT, self._end)

    def process_ended(self, reason: Failure) -> None:
        if self._status is None:
            self._status = exit_status(reason)
        self._end()

    def _end(self) -> None:
        if self.over:
            return
        self.over = True
        for call in (self._drain, self._kill):
            if call is not None and call.active():
                call.cancel()
        # What it left on its terminal or in its group hears the hang-up.
        self._signal(signal.SIGHUP)
        if self._transport is not None:
            self._transport.loseConnection()
        status = STATUS_NOT_STARTED if self._status is None else self._status
        self._link.shell_ended(self.id, status, self._reason)
        self._gone()


class Shells:
    """The shells a worker runs, by id."""

    def __init__(self, reactor: Any, link: ShellLink, grace: float) -> None:
        self._reactor = reactor
        self._link = link
        self._grace = grace
        self.running: dict[str, Shell] = {}

    def open(self, request: ShellRequest) -> None:
        """Start a shell; one that cannot start ends at once, saying why."""
        if request.id in self.running:
            return
        shell = Shell(self._reactor, request, self._link, self._grace, lambda: self._forget(request.id))
        try:
            shell.start()
        except ShellError as e:
            log.info("shell {id} not started: {why}", id=request.id, why=str(e))
            self._link.shell_ended(request.id, STATUS_NOT_STARTED, str(e))
            return
        self.running[request.id] = shell
        log.info("shell {id} started as {user} (pid {pid})", id=request.id, user=request.user or "the worker's user",
                 pid=shell.pid)

    def _forget(self, shell_id: str) -> None:
        self.running.pop(shell_id, None)

    def get(self, shell_id: str) -> Shell | None:
        return self.running.get(shell_id)

    def hang_up_all(self, reason: str) -> None:
        """The master is gone: every shell hangs up (nobody can see it any more)."""
        for shell in list(self.running.values()):
            shell.hang_up(reason)


class ShellFrames(FramedJSONProtocol):
    """The shell frames' handlers of L{pcci.worker.connection.MasterConnection}, and its L{ShellLink}."""

    factory: Any

    def __init__(self) -> None:
        self.shells: Shells | None = None

    def _handshake_done(self) -> bool:
        raise NotImplementedError

    def _shell(self, message: dict[str, Any]) -> Shell | None:
        if not self._handshake_done() or self.shells is None:
            return None
        return self.shells.get(message["shell"])

    def hang_up_shells(self, reason: str) -> None:
        if self.shells is not None:
            self.shells.hang_up_all(reason)

    def handle_shell_open(self, message: dict[str, Any]) -> None:
        if not self._handshake_done():
            return
        if self.shells is None:
            self.shells = Shells(self.factory.reactor, self, self.factory.settings.kill_grace)
        rows, cols = message["rows"], message["cols"]
        if not (0 < rows < 10_000 and 0 < cols < 10_000):
            self.shell_ended(message["shell"], STATUS_NOT_STARTED, f"a window of {rows}x{cols} characters")
            return
        self.shells.open(ShellRequest(
            message["shell"], message["cmd"], message["pty"], rows, cols, message["user"], message["term"],
        ))

    def handle_shell_data(self, message: dict[str, Any]) -> None:
        if not 0 < message["size"] <= MAX_SHELL_DATA:
            self.protocolViolation(f"shell_data of {message['size']} bytes")
            return
        shell = self._shell(message)
        self.receive_raw(message["size"], lambda data: shell.input(data) if shell is not None else None)

    def handle_shell_eof(self, message: dict[str, Any]) -> None:
        shell = self._shell(message)
        if shell is not None:
            shell.end_of_input()

    def handle_shell_resize(self, message: dict[str, Any]) -> None:
        shell = self._shell(message)
        if shell is not None:
            shell.resize(message["rows"], message["cols"])

    def handle_shell_ack(self, message: dict[str, Any]) -> None:
        shell = self._shell(message)
        if shell is not None:
            shell.delivered_to(message["read"])

    def handle_shell_close(self, message: dict[str, Any]) -> None:
        shell = self._shell(message)
        if shell is not None:
            shell.hang_up("closed")

    # ShellLink

    def shell_started(self, shell_id: str, pid: int) -> None:
        self.sendMessage("shell_started", shell=shell_id, pid=pid)

    def shell_output(self, shell_id: str, stream: str, data: bytes) -> None:
        self.send_raw({"code": "shell_output", "shell": shell_id, "stream": stream}, data)

    def shell_ack(self, shell_id: str, written: int) -> None:
        self.sendMessage("shell_ack", shell=shell_id, written=written)

    def shell_ended(self, shell_id: str, status: int, reason: str) -> None:
        self.sendMessage("shell_ended", shell=shell_id, status=status, reason=reason)
