"""C{twistd pcci-master}: the REST API and the worker port in one reactor."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.python import usage
from twisted.web.server import Site

from pcci.api import MasterAPI
from pcci.master import WorkerPortFactory
from pcci.options import positive_int, seconds
from pcci.services import ListeningService, LocalWorkerService
from pcci.state import DEFAULT_MAX_OUTPUT, DEFAULT_RETENTION, ClusterState
from pcci.worker import default_name


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a pcci master: the REST API for users and a port for workers "
        "to dial into."
    )
    optFlags = [
        ["local-worker", None, "Also run a worker named after this host in this process."],
    ]
    optParameters = [
        ["api", None, "tcp:8080", "Endpoint of the REST API."],
        ["listen", None, "tcp:7000", "Endpoint workers connect to."],
        ["retention", None, DEFAULT_RETENTION, "Seconds a finished pool stays queryable.", seconds],
        ["max-output", None, DEFAULT_MAX_OUTPUT, "Bytes of output kept per job.", positive_int],
        ["kill-grace", None, 5.0, "Local worker: seconds from SIGTERM to SIGKILL.", seconds],
    ]


class _StopState(Service):
    """Cancels the state's timers at shutdown."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def stopService(self) -> None:
        super().stopService()
        self.state.stop()


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    state = ClusterState(
        reactor, retention=options["retention"], max_output=options["max-output"]
    )
    master = MultiService()
    _StopState(state).setServiceParent(master)
    workers_port = ListeningService(
        reactor,
        serverFromString(reactor, options["listen"]),
        WorkerPortFactory(state, reactor),
        "workers",
    )
    workers_port.setServiceParent(master)
    ListeningService(
        reactor,
        serverFromString(reactor, options["api"]),
        Site(MasterAPI(state).app.resource()),
        "the REST API",
    ).setServiceParent(master)
    if options["local-worker"]:
        LocalWorkerService(
            reactor, workers_port, default_name(), options["kill-grace"]
        ).setServiceParent(master)
    return master
