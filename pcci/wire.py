"""
The wire protocol between workers and the master.

Each frame is one JSON object in UTF-8 followed by the terminator ``EOM``.
The encoder escapes every ``E`` of an ``EOM`` that occurs inside a JSON
string as ``\\u0045``, so the terminator can never occur inside a frame and
any text, ``EOM`` included, round-trips exactly.  See ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, cast

from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from pcci.twisted_internals import write_now

PROTOCOL_VERSION = 5
TERMINATOR = b"EOM"

#: Longest frame sent, and accepted by default (terminator excluded).
#: Output chunks and commands are bounded well below it, so only a broken
#: or hostile peer reaches it.
MAX_FRAME = 1024 * 1024

#: The least a daemon may be configured to accept: an output chunk at its
#: worst escaping, with room to spare.
MIN_FRAME = 256 * 1024

#: Characters of output carried by one ``output`` frame at most.  JSON
#: escaping can grow a character to six bytes, still far below MAX_FRAME.
OUTPUT_CHUNK = 32 * 1024

#: The most bytes an C{output_data} frame may carry: a chunk in UTF-8.
MAX_OUTPUT_DATA = 4 * OUTPUT_CHUNK

#: Worker names: what a hostname or a label holds, nothing that needs quoting.
VALID_NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,255}\Z")
NAME_RULE = "1 to 255 letters, digits and any of _ . @ : -"

#: Exit status of a job whose command could not be started, as in a shell.
STATUS_NOT_STARTED = 127

#: Exit status of a job killed for running out of time, as GNU timeout's.
STATUS_TIMED_OUT = 124

#: Why a job ended, when it was not simply its command exiting: the
#: C{reason} of an C{ended} message.
END_KILLED = "killed"
END_TIMED_OUT = "timed_out"
END_NOT_STARTED = "not_started"
END_CANCELLED = "cancelled"
#: A job asked again (C{sent_ago}) that the worker may have run before a restart.
END_LOST = "lost"
END_REASONS = (END_KILLED, END_TIMED_OUT, END_NOT_STARTED, END_CANCELLED, END_LOST)

#: Exit status of a job whose end its worker could not observe.
STATUS_LOST = -1

#: The streams of C{output} messages.
STREAMS = ("stdout", "stderr")

#: A peer silent for this many heartbeat intervals is lost.
MISSED_HEARTBEATS = 3

#: Heartbeat intervals a worker may ask for, in seconds.
HEARTBEAT_RANGE = (0.05, 3600.0)

#: The figures a heartbeat carries, in base units, in this order everywhere.
FIGURES = (
    "cpu_ratio",  # 0..1, all cores, since the previous heartbeat
    "load_1m",
    "load_5m",
    "load_15m",
    "memory_used_bytes",
    "memory_total_bytes",
    "disk_used_bytes",
    "disk_total_bytes",
    "temperature_celsius",  # the hottest sensor; None where there is none
    "uptime_seconds",
    "jobs_running",
)

#: Message codes each side accepts, with the fields each one must carry.
WORKER_MESSAGES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "hello": {"name": str, "version": int, "nonce": str, "heartbeat": (int, float)},
    "auth": {"proof": str},
    "heartbeat": {"figures": dict},
    "started": {"pool": str, "pid": int},
    "output": {"pool": str, "data": str, "stream": str},
    "output_data": {"pool": str, "stream": str, "seq": int, "size": int},
    "ended": {"pool": str, "status": int},
    "put_need": {"pool": str, "paths": list, "more": bool},
    "put_ack": {"pool": str, "written": int},
    "get_entries": {"pool": str, "entries": list, "more": bool},
    "get_data": {"pool": str, "path": str, "offset": int, "size": int},
    # Identities (see pcci.identity): a join instead of a hello, over TLS;
    # once welcomed, a renewal, or an enrollment by the cluster secret.
    "join": {"token": str, "name": str, "csr": str},
    "renew": {"csr": str},
    "enroll": {"csr": str},
    # How an upgrade the master asked for goes (see pcci.worker.upgrade).
    "upgrade_status": {"state": str, "reason": str},
    # This machine's facts, to a master whose welcome asked (see pcci.worker.facts).
    "facts": {"facts": dict},
    # A shell (see pcci.worker.shells): its process exists, its output (raw
    # bytes follow), input written to it, its end.
    "shell_started": {"shell": str, "pid": int},
    "shell_output": {"shell": str, "stream": str, "size": int},
    "shell_ack": {"shell": str, "written": int},
    "shell_ended": {"shell": str, "status": int, "reason": str},
}
MASTER_MESSAGES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "challenge": {"nonce": str, "proof": str},
    "welcome": {"version": int},
    "run": {"pool": str, "cmd": str},
    "kill": {"pool": str},
    "attach": {"pool": str, "after": int},
    "ack": {"pool": str},
    "pong": {},
    "bye": {"reason": str, "reconnect": bool},
    "put": {"pool": str, "dest": str, "entries": list, "more": bool},
    "put_data": {"pool": str, "path": str, "offset": int, "size": int},
    "put_end": {"pool": str},
    "get": {"pool": str, "path": str, "recursive": bool},
    "get_ack": {"pool": str, "read": int},
    # The answer to a join, renew or enroll: a certificate and the CA's, or
    # (both empty) a refusal whose reason says why.
    "certificate": {"certificate": str, "ca": str, "state": str, "reason": str},
    # Install this version beside the running one and restart into it
    # (only to a worker whose hello said upgrades).
    "upgrade": {"version": str, "wheel": str, "url": str, "sha256": str, "wheelhouse": dict, "find_links": str,
                "deadline": (int, float)},
    # A shell: open one, its input (raw bytes follow), the end of its input,
    # its window's size, output delivered so far, hang up.
    "shell_open": {"shell": str, "cmd": str, "pty": bool, "rows": int, "cols": int, "user": str, "term": str},
    "shell_data": {"shell": str, "size": int},
    "shell_eof": {"shell": str},
    "shell_resize": {"shell": str, "rows": int, "cols": int},
    "shell_ack": {"shell": str, "read": int},
    "shell_close": {"shell": str},
    # Look at this machine's facts now, and send them (to a worker whose hello said facts).
    "facts_refresh": {},
}

#: The most raw bytes a C{shell_data} or C{shell_output} frame announces.
MAX_SHELL_DATA = 64 * 1024

#: Bytes of a shell's output sent and not yet acknowledged, at most: the
#: worker stops reading the shell's terminal there until the master has
#: delivered them (C{shell_ack}), so a flood costs neither side memory.
#: The same window bounds input in flight the other way.
SHELL_WINDOW = 256 * 1024


#: Most jobs a hello may list.
MAX_HELD_JOBS = 100_000

#: Frames sent the moment they are written, not at the reactor's next poll:
#: someone waits for what they start or end.
URGENT = frozenset({"run", "kill", "ended"})


def held_jobs(message: dict[str, Any]) -> list[dict[str, Any]]:
    """
    The jobs a C{hello} says the worker holds, checked.

    @raise ProtocolError: a list that is not of C{{"pool": str, "ended": bool}}.
    """
    jobs = message.get("jobs", [])
    if not isinstance(jobs, list) or len(jobs) > MAX_HELD_JOBS:
        raise ProtocolError("hello's jobs must be a list")
    for job in jobs:
        if (
            not isinstance(job, dict)
            or not isinstance(job.get("pool"), str)
            or not isinstance(job.get("ended"), bool)
        ):
            raise ProtocolError('each of hello\'s jobs must be {"pool": string, "ended": boolean}')
    return jobs


#: Optional fields of a C{run} message: how the job runs.
RUN_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "timeout": (int, float),
    "env": dict,
    "cwd": str,
    "stdin": str,
}


def run_options(message: dict[str, Any]) -> dict[str, Any]:
    """
    The job options a C{run} message carries, checked.

    @raise ProtocolError: an option of the wrong type.
    """
    options = {k: message[k] for k in RUN_OPTIONS if message.get(k) is not None}
    for key, value in options.items():
        if not isinstance(value, RUN_OPTIONS[key]) or isinstance(value, bool):
            raise ProtocolError(f"run option {key!r} of the wrong type")
    if "timeout" in options and not options["timeout"] > 0:
        raise ProtocolError("run option 'timeout' must be over 0")
    env = options.get("env", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ProtocolError("run option 'env' must map strings to strings")
    return options


class ProtocolError(Exception):
    """A frame that breaks the protocol: the connection that sent it is closed."""


class FrameTooLong(ProtocolError):
    """A frame over L{MAX_FRAME}."""


#: Made once: C{json.dumps} with options makes an encoder each call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(message: dict[str, Any]) -> bytes:
    """
    Encode one message as a frame, terminator included.

    @raise FrameTooLong: if the frame would exceed L{MAX_FRAME}.
    """
    text = _ENCODER.encode(message)
    # "EOM" can only occur inside a JSON string (keys and values alike), where
    # an escaped "E" means the same thing.
    data = text.replace("EOM", "\\u0045OM").encode("utf-8")
    if len(data) > MAX_FRAME:
        raise FrameTooLong(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return data + TERMINATOR


def decode(
    frame: bytes, schema: dict[str, dict[str, type | tuple[type, ...]]]
) -> dict[str, Any]:
    """
    Decode and check one frame (terminator removed) against C{schema}.

    @raise ProtocolError: if the frame is not a JSON object with a known
        C{code} and the fields of that code with the right types.
    """
    try:
        message = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"not a JSON frame: {e}") from None
    except RecursionError:
        raise ProtocolError("a JSON frame nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    code = message.get("code")
    fields = schema.get(code) if isinstance(code, str) else None
    if fields is None:
        raise ProtocolError(f"unknown message code {code!r}")
    for field, kind in fields.items():
        value = message.get(field)
        # bool is an int in Python; a protocol number is never a JSON boolean.
        if not isinstance(value, kind) or (
            kind is not bool and isinstance(value, bool)
        ):
            raise ProtocolError(f"{code!r} needs {field!r} of type {kind}")
    return message


class FramedJSONProtocol(LineReceiver):
    """
    Frames, parses and dispatches messages to C{handle_<code>} methods.

    Subclasses set C{accepts} to the schema of what the peer may send.  Any
    bad frame closes this one connection, logged with the peer's address.
    """

    delimiter = TERMINATOR
    MAX_LENGTH = MAX_FRAME
    accepts: dict[str, dict[str, type | tuple[type, ...]]] = {}
    log = Logger()

    def connectionMade(self) -> None:
        # Frames are small and latency matters: do not wait to fill packets.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass  # not a TCP socket after all (TLS over unix, say)

    #: Frames nobody waits for, held to go out with the next one (L{send_later}).
    _later: list[bytes] | None = None

    def sendMessage(self, code: str, **fields: Any) -> None:
        if self.transport is None:
            return
        data = self._after_later(encode({"code": code, **fields}))
        if code in URGENT:
            write_now(self.transport, data)
        else:
            self.transport.write(data)

    def lineReceived(self, line: bytes) -> None:
        self.frame_received()
        try:
            message = decode(line, self.accepts)
        except ProtocolError as e:
            self.protocolViolation(str(e))
            return
        handler: Callable[[dict[str, Any]], None] = getattr(
            self, "handle_" + message["code"]
        )
        try:
            handler(message)
        except Exception:
            # A bug in one handler must not cost the connection and its jobs.
            self.log.failure("error handling {code!r} frame", code=message["code"])

    def send_raw(self, header: dict[str, Any], data: bytes) -> None:
        """A frame, then C{data} as raw bytes (its C{size}): no encoding to pay."""
        if self.transport is not None:
            self.transport.writeSequence([self._after_later(encode({**header, "size": len(data)})), data])

    def send_later(self, code: str, **fields: Any) -> bool:
        """
        Hold a frame nobody waits for (an acknowledgement) to go out with
        the next frame sent, or at L{flush_later}: both in one write, and
        over TLS in one record.  True for the first frame held, whose
        sender is to see that L{flush_later} comes.
        """
        data = encode({"code": code, **fields})
        if self._later is None:
            self._later = [data]
            return True
        self._later.append(data)
        return False

    def flush_later(self) -> None:
        """Send the frames held by L{send_later} now, if any."""
        data = self._after_later(b"")
        if data and self.transport is not None:
            self.transport.write(data)

    def _after_later(self, data: bytes) -> bytes:
        """C{data}, after the frames held, which it takes along."""
        if self._later is None:
            return data
        self._later.append(data)
        data, self._later = b"".join(self._later), None
        return data

    def receive_raw(self, size: int, then: Callable[[bytes], None]) -> None:
        """
        The next C{size} bytes after this frame are raw data (a pushed
        file's piece), not frames: hand them to C{then}, then read frames
        again.  Called from a frame's handler.
        """
        self._raw_left, self._raw_then = size, then
        self._raw_parts: list[bytes] = []
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        self.frame_received()
        take = data[: self._raw_left]
        self._raw_parts.append(take)
        self._raw_left -= len(take)
        if self._raw_left:
            return
        block, then = b"".join(self._raw_parts), self._raw_then
        self._raw_parts = []
        try:
            then(block)
        except Exception:
            self.log.failure("error handling raw data")
        self.setLineMode(data[len(take):])

    def frame_received(self) -> None:
        """Called for every frame, before it is parsed: the peer is alive."""

    def lineLengthExceeded(self, line: bytes) -> None:
        self.protocolViolation(f"frame longer than {self.MAX_LENGTH} bytes")

    def protocolViolation(self, why: str) -> None:
        """Log a broken frame and drop the connection that sent it."""
        self.log.warn(
            "closing connection from {peer}: {why}",
            peer=peer_address(self.transport),
            why=why,
        )
        self.clearLineBuffer()
        self.abort_connection()

    def close_connection(self) -> None:
        """Close the connection once what is written (and held) is sent."""
        if self.transport is not None:
            self.flush_later()
            self.transport.loseConnection()

    def abort_connection(self) -> None:
        """Drop the connection now, whatever is left unsent."""
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()


def peer_address(transport: Any) -> str:
    """The peer of C{transport} as C{host:port}, for logs and the REST API."""
    try:
        address = transport.getPeer()
    except Exception:
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)
