"""
A worker's identity over its connection to the master: enrolled by the
cluster secret (C{--enroll}), and renewed before its certificate ends
(C{docs/protocol.md}, "Identities").

Python 3.9: a worker imports this.
"""

from __future__ import annotations

import time
from typing import Any

from pcci.identity import IdentityError, WorkerIdentity
from pcci.wire import FramedJSONProtocol


class CertificateFrames(FramedJSONProtocol):
    """The certificate half of L{pcci.worker.connection.MasterConnection}."""

    factory: Any

    def __init__(self) -> None:
        #: The master signs keys (its welcome says so): renewals, enrollment.
        self.identities = False
        #: The identity whose key the master was asked to sign.
        self._asked: WorkerIdentity | None = None

    def close(self) -> None:
        raise NotImplementedError

    def _ask(self, code: str, identity: WorkerIdentity) -> None:
        """Ask the master to sign this worker's key: C{enroll} (by the secret) or C{renew}."""
        self._asked = identity
        self.sendMessage(code, csr=identity.request())

    def _renew_if_due(self) -> None:
        identity = self.factory.identity
        if self.identities and self._asked is None and identity is not None and identity.needs_renewal(time.time()):
            self.log.info("this worker's certificate ends soon: asking the master for a new one")
            self._ask("renew", identity)

    def handle_certificate(self, message: dict[str, Any]) -> None:
        identity, self._asked = self._asked, None
        if identity is None:
            self.protocolViolation("a certificate not asked for")
            return
        if message["reason"]:
            self.log.error("the master refused to sign this worker's key: {reason}", reason=message["reason"])
            return
        enrolled = self.factory.identity is None
        try:
            identity.keep(message["certificate"], message["ca"])
        except IdentityError as e:
            self.log.error("{why}", why=str(e))
            return
        self.factory.identity = identity
        if enrolled:
            self.log.info("worker {name} enrolled: reconnecting with its own identity", name=identity.name)
            self.close()
        else:
            self.log.info("worker {name}'s certificate renewed", name=identity.name)

