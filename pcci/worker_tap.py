"""C{twistd pcci-worker}: run the master's commands on this machine."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import clientFromString
from twisted.python import usage

from pcci.options import seconds
from pcci.services import WorkerService
from pcci.worker import default_name


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run a pcci worker: keep a connection to the master and run its jobs."
    optParameters = [
        ["master", None, "tcp:localhost:7000", "Client endpoint of the master's worker port."],
        ["name", None, None, "Name of this worker (default: the hostname)."],
        ["kill-grace", None, 5.0, "Seconds from SIGTERM to SIGKILL when a job is killed.", seconds],
    ]

    def postOptions(self) -> None:
        if not self["name"]:
            self["name"] = default_name()


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor

    def dismissed(reason: str) -> None:
        # Another worker holds this name: stop for good instead of flapping.
        reactor.stop()

    return WorkerService(
        reactor,
        clientFromString(reactor, options["master"]),
        options["name"],
        options["kill-grace"],
        on_dismissed=dismissed,
    )
