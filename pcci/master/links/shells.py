"""
The shell frames of a worker's connection (C{docs/protocol.md}, "A
shell"): what a L{pcci.master.cluster.shells.ShellSession} sends its worker,
and the worker's answers handed back to it.
"""

from __future__ import annotations

from typing import Any

from pcci.master.cluster.shells import ShellOrder, Shells, ShellSession
from pcci.wire import MAX_SHELL_DATA, STREAMS, FramedJSONProtocol


class ShellFrames(FramedJSONProtocol):
    """The shell half of L{pcci.master.links.connection.WorkerConnection}."""

    name: str
    shells: Shells

    def _current(self) -> bool:
        raise NotImplementedError

    def _session(self, message: dict[str, Any]) -> ShellSession | None:
        return self.shells.of(self, message["shell"]) if self._current() else None

    def handle_shell_started(self, message: dict[str, Any]) -> None:
        session = self._session(message)
        if session is not None:
            session.started(message["pid"])

    def handle_shell_output(self, message: dict[str, Any]) -> None:
        if not 0 < message["size"] <= MAX_SHELL_DATA or message["stream"] not in STREAMS:
            self.protocolViolation(f"shell_output of {message['size']} bytes on {message['stream']!r}")
            return
        session = self._session(message)

        def received(data: bytes) -> None:
            if session is not None:  # else it ended here meanwhile: dropped
                session.output(message["stream"], data)

        self.receive_raw(message["size"], received)

    def handle_shell_ack(self, message: dict[str, Any]) -> None:
        session = self._session(message)
        if session is not None:
            session.input_written(message["written"])

    def handle_shell_ended(self, message: dict[str, Any]) -> None:
        session = self._session(message)
        if session is not None:
            session.ended(message["status"], message["reason"][:1000])

    # ShellLink: what sessions send

    def shell_open(self, shell_id: str, order: ShellOrder) -> None:
        self.sendMessage(
            "shell_open", shell=shell_id, cmd=order.cmd, pty=order.pty, rows=order.rows, cols=order.cols,
            user=order.user, term=order.term,
        )

    def shell_data(self, shell_id: str, data: bytes) -> None:
        for start in range(0, len(data), MAX_SHELL_DATA):
            self.send_raw({"code": "shell_data", "shell": shell_id}, data[start:start + MAX_SHELL_DATA])

    def shell_eof(self, shell_id: str) -> None:
        self.sendMessage("shell_eof", shell=shell_id)

    def shell_resize(self, shell_id: str, rows: int, cols: int) -> None:
        self.sendMessage("shell_resize", shell=shell_id, rows=rows, cols=cols)

    def shell_ack(self, shell_id: str, read: int) -> None:
        self.sendMessage("shell_ack", shell=shell_id, read=read)

    def shell_close(self, shell_id: str) -> None:
        self.sendMessage("shell_close", shell=shell_id)
