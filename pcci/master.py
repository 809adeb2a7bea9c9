"""The master's side of the wire protocol: one L{WorkerConnection} per worker."""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from pcci.state import ClusterState
from pcci.wire import (
    PROTOCOL_VERSION,
    WORKER_MESSAGES,
    FramedJSONProtocol,
    peer_address,
)

#: Seconds a new connection has to say hello before it is dropped.
HELLO_TIMEOUT = 30.0

#: Worker names: what a hostname or a label holds, nothing that needs quoting.
VALID_NAME = re.compile(r"[A-Za-z0-9_.@:-]{1,255}\Z")


class WorkerConnection(FramedJSONProtocol):
    """
    A connected worker, as the master sees it.

    Until its C{hello} it is nobody; after, it reports job events to the
    L{ClusterState} and carries the state's requests to the worker.
    """

    accepts = WORKER_MESSAGES
    log = Logger()

    def __init__(self, state: ClusterState, clock: IReactorTime) -> None:
        self.state = state
        self.clock = clock
        self.name: str | None = None
        self.address = "?"
        self.connected_at = 0.0
        self._hello_call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.address = peer_address(self.transport)
        self._hello_call = self.clock.callLater(HELLO_TIMEOUT, self._no_hello)

    def _no_hello(self) -> None:
        self._hello_call = None
        self.protocolViolation(f"no hello within {HELLO_TIMEOUT:g} seconds")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._hello_call is not None and self._hello_call.active():
            self._hello_call.cancel()
        if self.name is not None:
            self.state.remove_worker(self, "disconnected")

    # Messages from the worker

    def handle_hello(self, message: dict[str, Any]) -> None:
        if self.name is not None:
            self.protocolViolation("a second hello")
            return
        if self._hello_call is not None and self._hello_call.active():
            self._hello_call.cancel()
        version = message["version"]
        if version != PROTOCOL_VERSION:
            self.log.warn(
                "worker at {peer} speaks protocol {version}, not {ours}",
                peer=self.address,
                version=version,
                ours=PROTOCOL_VERSION,
            )
            self.sendMessage(
                "bye",
                reason=f"master speaks protocol {PROTOCOL_VERSION}, not {version}",
                reconnect=False,
            )
            self.transport.loseConnection()
            return
        name = message["name"]
        if not VALID_NAME.match(name):
            self.protocolViolation(f"invalid worker name {name!r}")
            return
        self.name = name
        self.connected_at = self.clock.seconds()
        self.state.add_worker(self)
        self.sendMessage("welcome", version=PROTOCOL_VERSION)

    def _current(self) -> bool:
        """True for a worker that said hello and was not replaced since."""
        if self.name is None:
            self.protocolViolation("a job message before hello")
            return False
        return self.state.workers.get(self.name) is self

    def handle_started(self, message: dict[str, Any]) -> None:
        if self._current():
            self.state.job_started(self.name, message["pool"], message["pid"])

    def handle_output(self, message: dict[str, Any]) -> None:
        if self._current():
            self.state.job_output(self.name, message["pool"], message["data"])

    def handle_ended(self, message: dict[str, Any]) -> None:
        if self._current():
            self.state.job_ended(self.name, message["pool"], message["status"])

    # Requests from the state (WorkerLink)

    def run_job(self, pool_id: str, cmd: str) -> None:
        self.sendMessage("run", pool=pool_id, cmd=cmd)

    def kill_job(self, pool_id: str) -> None:
        self.sendMessage("kill", pool=pool_id)

    def dismiss(self, reason: str) -> None:
        self.sendMessage("bye", reason=reason, reconnect=False)
        self.transport.loseConnection()


class WorkerPortFactory(Factory):
    """Builds a L{WorkerConnection} for each connection on the worker port."""

    def __init__(self, state: ClusterState, clock: IReactorTime) -> None:
        self.state = state
        self.clock = clock

    def buildProtocol(self, addr: IAddress) -> WorkerConnection:
        protocol = WorkerConnection(self.state, self.clock)
        protocol.factory = self
        return protocol
