"""C{twistd pcci-worker}: run the master's commands on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from pcci import auth, daemon
from pcci.identity import IdentityError, JoinToken, WorkerIdentity
from pcci.labels import default_labels, parse_label
from pcci.options import positive_int, seconds
from pcci.wire import HEARTBEAT_RANGE, NAME_RULE, VALID_NAME
from pcci.worker.connection import default_name
from pcci.worker.joining import IdentityEndpoint, JoinRefused, join_until_done
from pcci.worker.service import RETRY_POLICY, WorkerService
from pcci.worker.settings import DEFAULT_HEARTBEAT, WorkerSettings

log = Logger()


def default_secret() -> Path:
    """Where a worker looks for the cluster secret when no --secret-file says."""
    return Path(auth.DEFAULT_STATE_DIR, auth.CLUSTER_SECRET_FILE).expanduser()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a pcci worker: keep a connection to the master and run its jobs. "
        "It joins once with a token (--join tls:HOST:PORT --token TOKEN, as pcci join-token create prints it), "
        "then connects with its own identity; or it holds the cluster secret (--secret-file)."
    )
    optFlags = [
        ["no-auth", None, "Join a master started with --no-auth, trusting whichever master answers."],
        ["enroll", None, "Once welcomed by the cluster secret, ask for this worker's own identity, then connect "
            "with it."],
        ["join-only", None, "Join with --join and --token, keep the identity, and exit: 0 once joined (at once if "
            "this worker has joined already), a refusal's status otherwise.  For installers, which then start the "
            "worker without the token."],
    ]
    optParameters = [
        ["name", None, None, "Name of this worker (default: the hostname)."],
        ["join", None, None, "A master's worker port to join (tls:HOST:PORT), with --token; once joined, this worker "
            "dials it with its identity (and --join again does nothing)."],
        ["token", None, None, "The join token for --join."],
        ["secret-file", None, None, "The cluster secret (default: ~/.pcci/cluster-secret, if there)."],
        ["kill-grace", None, 5.0, "Seconds from SIGTERM to SIGKILL when a job is killed.", seconds],
        ["heartbeat", None, DEFAULT_HEARTBEAT, "Seconds between heartbeats (health figures) to the master.", seconds],
        ["disk", None, "/", "The filesystem whose use heartbeats report."],
        ["max-jobs", None, None, "Jobs run at once; the rest wait in order (default: 4 per CPU).", positive_int],
        ["state-dir", None, auth.DEFAULT_STATE_DIR, "Where this worker keeps its journal of running jobs, and the "
            "jobs it was sent."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.labels = default_labels()
        self.masters: list[str] = []

    def opt_master(self, endpoint: str) -> None:
        """Client endpoint of a master's worker port (default tcp:localhost:7000); repeat it for several masters."""
        self.masters.append(endpoint)

    def opt_label(self, text: str) -> None:
        """A label for targeting, KEY or KEY=VALUE (repeatable); os= and arch= are automatic."""
        try:
            key, value = parse_label(text)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self.labels[key] = value

    def postOptions(self) -> None:
        if self["join"]:
            self.masters = [self["join"], *[m for m in self.masters if m != self["join"]]]
        self.masters = self.masters or ["tcp:localhost:7000"]
        low, high = HEARTBEAT_RANGE
        if not low <= self["heartbeat"] <= high:
            raise usage.UsageError(f"--heartbeat is between {low} and {high} seconds")
        if not self["name"]:
            self["name"] = default_name()
        if not VALID_NAME.match(self["name"]):
            raise usage.UsageError(
                f"invalid worker name {self['name']!r}: a name is {NAME_RULE}"
                + ("" if self["name"] != default_name() else "; choose one with --name")
            )
        state_dir = Path(self["state-dir"]).expanduser()
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise usage.UsageError(f"cannot use --state-dir {state_dir}: {e}") from None
        self.journal = state_dir / f"worker-{self['name']}.jobs.json"
        self.secret: bytes | None = None
        self.token: JoinToken | None = None
        try:
            self.identity = WorkerIdentity.load(state_dir, self["name"])
        except IdentityError as e:
            raise usage.UsageError(str(e)) from None
        if self["no-auth"]:
            return
        self._join_options()
        path = self["secret-file"]
        if path is None and (self.identity is not None or self.token is not None):
            return  # its identity is enough
        if path is None:
            default = default_secret()
            if not default.exists():
                raise usage.UsageError(
                    "a worker needs an identity or the cluster secret: --join tls:HOST:PORT"
                    " --token TOKEN (pcci join-token create prints the line), --secret-file"
                    " PATH (a copy of the master's <state-dir>/cluster-secret), or --no-auth"
                    " to join a master started with --no-auth"
                )
            path = str(default)
        try:
            self.secret = auth.read_secret(path)
        except auth.AuthConfigError as e:
            raise usage.UsageError(str(e)) from None

    def _join_options(self) -> None:
        """C{--join} with C{--token} (read now: a token that is not one stops the start), and C{--enroll}."""
        if self["join-only"] and self["join"] is None:
            raise usage.UsageError("--join-only needs --join tls:HOST:PORT and --token TOKEN")
        if self["join"] is None:
            if self["token"] is not None:
                raise usage.UsageError("--token goes with --join tls:HOST:PORT")
        elif self.identity is None:
            if self["token"] is None:
                raise usage.UsageError("--join needs --token TOKEN (pcci join-token create prints it)")
            if not self["join"].startswith(("tls:", "tcp:")):
                raise usage.UsageError("--join is a master's worker port: tls:HOST:PORT")
            try:
                self.token = JoinToken.parse(self["token"])
            except IdentityError as e:
                raise usage.UsageError(f"--token: {e}") from None
        if self["enroll"] and self["secret-file"] is None and not default_secret().exists():
            raise usage.UsageError("--enroll asks by the cluster secret: give --secret-file")


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    daemon.prepare(reactor)
    if options["join-only"]:
        return JoinOnly(reactor, options)

    def dismissed(reason: str) -> None:
        # The master says never to come back (revoked, or a name not its
        # own): stop for good, with a status a supervisor will not restart.
        daemon.stop_with_error(reactor, service.factory.exit_status)

    def use_identity(identity: WorkerIdentity) -> None:
        service.factory.identity = identity

    settings = WorkerSettings(
        options["name"],
        options.secret,
        kill_grace=options["kill-grace"],
        heartbeat=options["heartbeat"],
        disk=options["disk"],
        max_jobs=options["max-jobs"],
        labels=options.labels,
        journal=options.journal,
        enroll=options["enroll"],
    )
    service = WorkerService(
        reactor,
        [IdentityEndpoint(reactor, master, lambda: service.factory.identity) for master in options.masters],
        settings,
        options.identity,
        on_dismissed=dismissed,
        before_connect=None if options.token is None else lambda: _join(reactor, options, use_identity),
    )
    return service


class JoinOnly(Service):
    """C{--join-only}: join (unless joined already), then stop the daemon."""

    def __init__(self, reactor: Any, options: Options) -> None:
        self.reactor = reactor
        self.options = options

    def startService(self) -> None:
        super().startService()
        if self.options.token is None:
            log.info("worker {name} has joined already: its identity is kept", name=self.options["name"])
            self.reactor.callWhenRunning(self.reactor.stop)
            return
        _join(self.reactor, self.options, lambda identity: self.reactor.stop())


def _join(reactor: Any, options: Options, then: Callable[[WorkerIdentity], None]) -> Deferred[None]:
    """Join with the token, once, then C{then(identity)}; a refusal stops the worker with its status."""
    assert options.token is not None and options.journal is not None
    identity = WorkerIdentity.fresh(options.journal.parent, options["name"])
    d = join_until_done(reactor, options["join"], options.token, identity, RETRY_POLICY)

    def joined(state: str) -> None:
        then(identity)
        log.info(
            "worker {name} joined its cluster ({state}); it connects with its own identity from now on",
            name=options["name"], state=state,
        )
        if state == "pending":
            log.info("a person approves it with: pcci workers approve {name}", name=options["name"])

    def refused(failure: Failure) -> Deferred[None]:
        failure.trap(JoinRefused)
        refusal: JoinRefused = failure.value  # type: ignore[assignment]
        log.error("cannot join: {reason}", reason=refusal.reason)
        daemon.stop_with_error(reactor, refusal.status)
        return Deferred()  # never dials

    return d.addCallbacks(joined, refused)
