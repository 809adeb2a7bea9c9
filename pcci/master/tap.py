"""C{twistd pcci-master}: the REST API and the worker port in one reactor."""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from pcci import auth
from pcci.master.api import (
    COMMAND_CEILING,
    MAX_BODY,
    MAX_COMMAND,
    MAX_WORKERS,
    MasterAPI,
)
from pcci.master.guards import bounded_request
from pcci.master.connection import HANDSHAKE_TIMEOUT, WorkerPortFactory
from pcci.options import positive_int, seconds
from pcci.master.services import ConnectionLimit, ListeningService, LocalWorkerService
from pcci.master.state import (
    DEFAULT_HISTORY,
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_POOLS,
    DEFAULT_RETENTION,
    ClusterState,
)
from pcci.wire import MAX_FRAME, MIN_FRAME
from pcci.worker.connection import default_name

log = Logger()

#: Seconds an HTTP connection may stay silent; above the longest long poll.
HTTP_TIMEOUT = 75.0

#: Connections one address may hold open on each port.
MAX_CONNECTIONS = 64


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a pcci master: the REST API for users and a port for workers "
        "to dial into.  Secure by default: see docs/security.md."
    )
    optFlags = [
        ["local-worker", None, "Also run a worker named after this host in this process."],
        ["no-auth", None, "No API tokens and no cluster secret: for trusted networks only."],
    ]
    optParameters = [
        ["api", None, "tcp:8080", "Endpoint of the REST API."],
        ["listen", None, "tcp:7000", "Endpoint workers connect to."],
        ["state-dir", None, auth.DEFAULT_STATE_DIR, "Where the API token and the cluster secret are kept."],
        ["api-token-file", None, None, "API tokens, one a line ('TOKEN' or 'TOKEN read'), instead of <state-dir>/api-token."],
        ["retention", None, DEFAULT_RETENTION, "Seconds a finished pool stays queryable.", seconds],
        ["max-output", None, DEFAULT_MAX_OUTPUT, "Bytes of output kept per job.", positive_int],
        ["history", None, DEFAULT_HISTORY, "Seconds of health figures kept per worker.", seconds],
        ["max-pools", None, DEFAULT_MAX_POOLS, "Pools kept; past it the oldest finished is dropped.", positive_int],
        ["max-body", None, MAX_BODY, "Bytes of a request body.", positive_int],
        ["max-command", None, MAX_COMMAND, f"Characters of a command (at most {COMMAND_CEILING}).", positive_int],
        ["max-workers", None, MAX_WORKERS, "Workers in one pool.", positive_int],
        ["max-frame", None, MAX_FRAME, f"Bytes of a frame from a worker (at least {MIN_FRAME}).", positive_int],
        ["max-connections", None, MAX_CONNECTIONS, "Connections from one address, on each port.", positive_int],
        ["http-timeout", None, HTTP_TIMEOUT, "Seconds before a silent HTTP connection is closed, and for a request to arrive whole.", seconds],
        ["handshake-timeout", None, HANDSHAKE_TIMEOUT, "Seconds a worker has to complete its handshake.", seconds],
        ["kill-grace", None, 5.0, "Local worker: seconds from SIGTERM to SIGKILL.", seconds],
    ]

    def postOptions(self) -> None:
        if self["max-command"] > COMMAND_CEILING:
            raise usage.UsageError(f"--max-command is at most {COMMAND_CEILING}")
        if self["max-frame"] < MIN_FRAME:
            raise usage.UsageError(f"--max-frame is at least {MIN_FRAME}")
        if self["local-worker"] and not self["listen"].startswith(("tcp", "unix")):
            raise usage.UsageError(
                "--local-worker dials a tcp: or unix: --listen; over TLS, run"
                " pcci-worker beside the master instead"
            )
        self.secret: bytes | None = None
        self.tokens: list[auth.APIToken] | None = None
        if self["no-auth"]:
            return
        try:
            state_dir = auth.ensure_state_dir(self["state-dir"])
            self.secret_file = state_dir / auth.CLUSTER_SECRET_FILE
            self.secret = auth.read_secret(self.secret_file)
            self.token_file = self["api-token-file"] or str(state_dir / auth.API_TOKEN_FILE)
            self.tokens = auth.read_tokens(self.token_file)
        except (OSError, auth.AuthConfigError) as e:
            raise usage.UsageError(str(e)) from None


class _StopState(Service):
    """Cancels the state's timers at shutdown."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def stopService(self) -> None:
        super().stopService()
        self.state.stop()


def _announce(options: Options, port: IListeningPort) -> None:
    """Log how to use this master: the auth mode, the token, how workers join."""
    if options.secret is None:
        log.warn(
            "authentication is OFF (--no-auth): anyone who reaches the API can run"
            " commands on every worker, and any program can join as a worker"
        )
        join = ""
    else:
        log.info("API token in {file}", file=options.token_file)
        join = f" --secret-file <a copy of {options.secret_file}>"
    where = port.getHost()
    address = f"tcp:{socket.gethostname()}:{where.port}" if hasattr(where, "port") else options["listen"]
    log.info(
        "workers join with: twistd -n pcci-worker --master {address}{join}",
        address=address,
        join=join,
    )


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    state = ClusterState(
        reactor,
        retention=options["retention"],
        max_output=options["max-output"],
        max_pools=options["max-pools"],
        history=options["history"],
    )
    master = MultiService()
    _StopState(state).setServiceParent(master)
    workers_port = ListeningService(
        reactor,
        serverFromString(reactor, options["listen"]),
        ConnectionLimit(
            WorkerPortFactory(
                state,
                reactor,
                options.secret,
                handshake_timeout=options["handshake-timeout"],
                max_frame=options["max-frame"],
            ),
            options["max-connections"],
        ),
        "workers",
    )
    workers_port.setServiceParent(master)
    workers_port.when_listening().addCallback(lambda port: _announce(options, port))
    api = MasterAPI(
        state,
        max_body=options["max-body"],
        max_command=options["max-command"],
        max_workers=options["max-workers"],
    )
    site = Site(
        api.resource(options.tokens),
        requestFactory=bounded_request(options["max-body"], options["http-timeout"]),
        timeout=options["http-timeout"],
    )
    ListeningService(
        reactor,
        serverFromString(reactor, options["api"]),
        ConnectionLimit(site, options["max-connections"]),
        "the REST API",
    ).setServiceParent(master)
    if options["local-worker"]:
        LocalWorkerService(
            reactor, workers_port, default_name(), options.secret, options["kill-grace"]
        ).setServiceParent(master)
    return master
