"""
The frames of pushes (C{put}, C{put_data}, C{put_end}) and fetches
(C{get}, C{get_ack}) on the worker's connection to its master, handed to a
L{Receiver} or a L{Sender} per pool.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.python.threadpool import ThreadPool

from pcci.transfer import CHUNK
from pcci.wire import FramedJSONProtocol
from pcci.worker.receiver import Receiver
from pcci.worker.sender import Sender


class TransferFactory(Protocol):
    reactor: Any

    def file_threads(self) -> ThreadPool:
        """The thread that reads and writes the files of transfers."""


class TransferFrames(FramedJSONProtocol):
    """The transfer frames' handlers of L{pcci.worker.connection.MasterConnection}."""

    factory: TransferFactory

    def __init__(self) -> None:
        #: Pushes and fetches under way, by pool id.
        self.transfers: dict[str, Receiver | Sender] = {}

    def _handshake_done(self) -> bool:
        raise NotImplementedError

    def abort_transfers(self, reason: str, pool_id: str | None = None) -> None:
        """Stop the transfer of one pool (or every one), saying why."""
        for key in list(self.transfers) if pool_id is None else [pool_id]:
            transfer = self.transfers.pop(key, None)
            if transfer is not None:
                transfer.abort(reason)

    # Pushes (pcci cp): see pcci.transfer

    def handle_put(self, message: dict[str, Any]) -> None:
        if not self._handshake_done():
            return
        pool_id = message["pool"]
        receiver = self.transfers.get(pool_id)
        if not isinstance(receiver, Receiver):
            receiver = self.transfers[pool_id] = Receiver(
                self.factory.reactor,
                self.factory.file_threads(),
                pool_id,
                message["dest"],
                message,
                lambda code, **fields: self.transfer_report(pool_id, code, **fields),
            )
        receiver.entries_received(message["entries"], message["more"])

    def handle_put_data(self, message: dict[str, Any]) -> None:
        if not self._handshake_done():
            return
        if not 0 < message["size"] <= CHUNK:
            self.protocolViolation(f"put_data of {message['size']} bytes")
            return
        receiver = self.transfers.get(message["pool"])

        def received(data: bytes) -> None:
            if isinstance(receiver, Receiver):  # else a push stopped meanwhile: dropped
                receiver.data(message["path"], message["offset"], data)

        self.receive_raw(message["size"], received)  # the raw bytes follow

    def handle_put_end(self, message: dict[str, Any]) -> None:
        receiver = self.transfers.get(message["pool"]) if self._handshake_done() else None
        if isinstance(receiver, Receiver):
            receiver.end()

    # Fetches (pcci fetch): see pcci.worker.sender

    def handle_get(self, message: dict[str, Any]) -> None:
        if not self._handshake_done() or message["pool"] in self.transfers:
            return
        pool_id = message["pool"]
        sender = self.transfers[pool_id] = Sender(
            self.factory.reactor, self.factory.file_threads(), pool_id, message["path"], message["recursive"], self
        )
        sender.start()

    def handle_get_ack(self, message: dict[str, Any]) -> None:
        sender = self.transfers.get(message["pool"]) if self._handshake_done() else None
        if isinstance(sender, Sender):
            sender.ack(message["read"])

    def transfer_report(self, pool_id: str, code: str, **fields: Any) -> None:
        """A push's or a fetch's frame to the master; its end lets it go."""
        if code == "ended":
            self.transfers.pop(pool_id, None)
        self.sendMessage(code, pool=pool_id, **fields)
