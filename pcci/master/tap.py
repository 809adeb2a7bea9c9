"""C{twistd pcci-master}: the REST API and the worker port in one reactor."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.http import combinedLogFormatter, datetimeToLogString
from twisted.web.server import Site

from pcci import auth, daemon
from pcci.daemon import stop_with_error
from pcci.identity import IdentityError
from pcci.master.access.ca import ClusterCA
from pcci.master.access.enrollment import Enrollment
from pcci.master.access.tokens import TokenBook
from pcci.master.cluster.history import DEFAULT_MAX_POOLS
from pcci.master.cluster.jobspec import NOTIFY_ON
from pcci.master.cluster.recordings import DEFAULT_RECORD_MAX
from pcci.master.cluster.roster import DEFAULT_FORGET_AFTER, DEFAULT_HISTORY, DEFAULT_RECONNECT_GRACE
from pcci.master.cluster.schedules import Scheduler
from pcci.master.cluster.shells import DEFAULT_IDLE, DEFAULT_MAX_SHELLS, ShellSettings
from pcci.master.cluster.state import ClusterState, Settings
from pcci.master.http.api import MasterAPI
from pcci.master.http.base import APIParts
from pcci.master.http.common import COMMAND_CEILING, MAX_BODY, MAX_COMMAND, MAX_WORKERS, APILimits
from pcci.master.http.guards import bounded_request, raw_answer
from pcci.master.http.limits import ConnectionBudget, ConnectionLimit
from pcci.master.http.metrics import MasterMetrics
from pcci.master.install.kit import InstallKit
from pcci.master.links.admission import MODES, Gate, recheck
from pcci.master.links.connection import HANDSHAKE_TIMEOUT, WorkerPortFactory
from pcci.master.links.tls import SniffingFactory
from pcci.master.peers.peers import Notices, Peers
from pcci.master.services import ListeningService, LocalPortEndpoint, StateService
from pcci.master.store.base import StoreError
from pcci.master.store.postgres import PostgresDatabase, PostgresStore, check_database, is_postgres_url
from pcci.master.store.sqlite import SQLiteDatabase, open_database
from pcci.master.store.tables import Store
from pcci.master.transfers.pushes import MAX_ENTRIES
from pcci.master.webhooks.notifier import FORMATS, Hook, Hooks, Notifier
from pcci.master.webhooks.outbound import AddressPolicy, http_post
from pcci.options import positive_int, seconds
from pcci.output import DEFAULT_MAX_OUTPUT, DEFAULT_MAX_OUTPUT_TOTAL
from pcci.twisted_internals import http_channel, send_now
from pcci.wire import MAX_FRAME, MIN_FRAME
from pcci.worker.connection import default_name
from pcci.worker.service import WorkerService
from pcci.worker.settings import WorkerSettings

log = Logger()

#: Seconds a finished pool is kept, by default: a week.
RETENTION = 7 * 24 * 3600.0

#: Seconds an HTTP connection may stay silent; above the longest long poll.
HTTP_TIMEOUT = 75.0

#: Connections one address may hold open on each port before they prove
#: anything.
MAX_CONNECTIONS = 64


#: Bytes of an upload of files, by default: 4 GiB.
MAX_FILE = 4 * 2**30


class AnsweringSite(Site):
    """A site that sends each answer before it writes the answer's log line."""

    def log(self, request: Any) -> None:
        send_now(request.channel.transport)
        super().log(request)


def _access_log_line(timestamp: str, request: Any) -> str:
    """An access log line in the combined format, dated by the wall clock
    (the reactor keeps monotonic time, which would date it 1970)."""
    return combinedLogFormatter(datetimeToLogString(time.time()), request)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a pcci master: the REST API for users and a port for workers "
        "to dial into.  Secure by default: see docs/security.md."
    )
    optFlags = [
        ["local-worker", None, "Also run a worker named after this host in this process."],
        ["no-auth", None, "No API tokens and no worker identities or secret: for trusted networks only."],
        ["approve-workers", None, "Every worker that joins waits for a person: pcci workers approve NAME."],
        ["webhook-output", None, "Webhook deliveries carry the last 20 lines of each failed job's output (it may hold "
            "secrets)."],
        ["no-shell-record", None, "Keep no recording of shells (pcci shell); they are still listed and audited."],
    ]
    optParameters = [
        ["api", None, "tcp:8080", "Endpoint of the REST API."],
        ["listen", None, "tcp:7000", "Endpoint workers connect to."],
        ["state-dir", None, auth.DEFAULT_STATE_DIR, "Where the API token, the cluster CA (and any cluster secret) "
            "are kept."],
        ["worker-auth", None, None, "How workers prove themselves: identity (a certificate of this cluster's CA, got "
            "with a join token), secret (the cluster secret), or both.  Default: identity on a new state directory, "
            "both where a cluster secret is kept already."],
        ["api-token-file", None, None, "API tokens, one a line ('TOKEN [read] [name=NAME] [workers=…] [labels=…] "
            "[commands=…]'), instead of <state-dir>/api-token; reread on SIGHUP."],
        ["retention", None, RETENTION, "Seconds a finished pool is kept (on disk: see --db).", seconds],
        ["db", None, None, "Where pools are kept: an SQLite file (default: <state-dir>/pcci.db; ':memory:' keeps "
            "none), or a PostgreSQL URI (postgresql://...) that several masters share.", str],
        ["name", None, None, "This master's name among masters sharing a PostgreSQL --db (default: this host's name)."],
        ["reconnect-grace", None, DEFAULT_RECONNECT_GRACE, "Seconds a disconnected worker's running jobs wait for it "
            "before they are lost.", seconds],
        ["max-output", None, DEFAULT_MAX_OUTPUT, "Bytes of output kept per job.", positive_int],
        ["max-output-total", None, DEFAULT_MAX_OUTPUT_TOTAL, "Bytes of output kept in memory over all "
            "jobs.", positive_int],
        ["forget-after", None, DEFAULT_FORGET_AFTER, "Seconds an offline worker is remembered.", seconds],
        ["history", None, DEFAULT_HISTORY, "Seconds of health figures kept per worker.", seconds],
        ["max-pools", None, DEFAULT_MAX_POOLS, "Pools kept; past it the oldest finished is dropped.", positive_int],
        ["max-body", None, MAX_BODY, "Bytes of a request body.", positive_int],
        ["max-file", None, MAX_FILE, "Bytes of an upload of files (pcci cp, POST /files).", positive_int],
        ["max-push-entries", None, MAX_ENTRIES, "Files, directories and links in one push (pcci cp, POST "
            "/files).", positive_int],
        ["max-command", None, MAX_COMMAND, f"Characters of a command (at most {COMMAND_CEILING}).", positive_int],
        ["max-workers", None, MAX_WORKERS, "Workers in one pool.", positive_int],
        ["max-frame", None, MAX_FRAME, f"Bytes of a frame from a worker ({MIN_FRAME} to {MAX_FRAME}).", positive_int],
        ["max-connections", None, MAX_CONNECTIONS, "Connections from one address, on each port, until they prove "
            "themselves.", positive_int],
        ["max-jobs", None, None, "Local worker: jobs run at once (default: 4 per CPU).", positive_int],
        ["http-timeout", None, HTTP_TIMEOUT, "Seconds before a silent HTTP connection is closed, and for a request to "
            "arrive whole.", seconds],
        ["handshake-timeout", None, HANDSHAKE_TIMEOUT, "Seconds a worker has to complete its handshake.", seconds],
        ["kill-grace", None, 5.0, "Local worker: seconds from SIGTERM to SIGKILL.", seconds],
        ["webhook-on", None, "failed", "Which pools' ends --webhook URLs hear of: failed, or ended (every one)."],
        ["webhook-format", None, "json", "What a delivery's body is: json, or slack (a message Slack or Mattermost "
            "shows)."],
        ["webhook-secret-file", None, None, "The secret deliveries are signed with (default: "
            "<state-dir>/webhook-secret, made at first start)."],
        ["join-address", None, None, "HOST:PORT of the worker port as new machines reach it, for the line pcci "
            "join-token create prints (default: this host's name and the --listen port)."],
        ["public-url", None, None, "The API's address as people and new machines reach it, for the links in "
            "deliveries and the install line of join tokens (default: http://<this host>:<API port>/)."],
        ["shell-idle", None, DEFAULT_IDLE, "Seconds a shell may pass without a byte either way before it is "
            "closed.", seconds],
        ["max-shells", None, DEFAULT_MAX_SHELLS, "Shells open at once on one worker.", positive_int],
        ["shell-record-max", None, DEFAULT_RECORD_MAX, "Bytes of each shell's recording kept (asciicast, in the "
            "store, for --retention).", positive_int],
        ["wheelhouse", None, None, "A directory of wheels served at /wheelhouse/: the dependencies new workers install "
            "from, for labs with no route to a package index (see docs/offline.md)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["webhook"] = []
        self["notify-allow"] = []

    def opt_notify_allow(self, cidr: str) -> None:
        """
        Addresses (a CIDR, e.g. 127.0.0.0/8) pools' notify URLs may reach
        though loopback, link-local or unspecified; repeatable.
        """
        try:
            self["notify-allow"].append(ipaddress.ip_network(cidr, strict=False))
        except ValueError as e:
            raise usage.UsageError(f"--notify-allow {cidr!r}: {e}") from None

    def opt_webhook(self, url: str) -> None:
        """A URL told of each pool's end (as --webhook-on says); repeatable."""
        if not re.match(r"https?://\S+\Z", url):
            raise usage.UsageError(f"--webhook {url!r}: an http:// or https:// URL")
        self["webhook"].append(url)

    def _check_store(self) -> None:
        """
        Try the database now: one that cannot be used stops the start.  It is
        closed again: the master opens it once running (after twistd forks).
        """
        path = self["db"] or str(self.state_dir / "pcci.db")
        self.db_path = path
        if is_postgres_url(path):
            try:
                check_database(path, self.master_name)
            except StoreError as e:
                raise usage.UsageError(str(e)) from None
            return
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                raise usage.UsageError(f"cannot use --db {path}: {e}") from None
        try:
            open_database(path).close()
        except StoreError as e:
            raise usage.UsageError(str(e)) from None

    @property
    def unnamed(self) -> str | None:
        """The name of a token its line does not name."""
        return None if self["api-token-file"] else "admin"

    def postOptions(self) -> None:
        if self["webhook-on"] not in NOTIFY_ON:
            raise usage.UsageError("--webhook-on is failed or ended")
        if self["webhook-format"] not in FORMATS:
            raise usage.UsageError("--webhook-format is json or slack")
        if self["max-command"] > COMMAND_CEILING:
            raise usage.UsageError(f"--max-command is at most {COMMAND_CEILING}")
        if not MIN_FRAME <= self["max-frame"] <= MAX_FRAME:
            raise usage.UsageError(
                f"--max-frame is between {MIN_FRAME} and {MAX_FRAME}: workers never"
                f" send frames over {MAX_FRAME}"
            )
        self.wheelhouse = None if self["wheelhouse"] is None else Path(self["wheelhouse"]).expanduser()
        if self.wheelhouse is not None and not self.wheelhouse.is_dir():
            raise usage.UsageError(f"--wheelhouse {self.wheelhouse}: not a directory")
        if self["local-worker"] and not self["listen"].startswith(("tcp", "unix")):
            raise usage.UsageError(
                "--local-worker dials a tcp: or unix: --listen; over TLS, run"
                " pcci-worker beside the master instead"
            )
        self.secret: bytes | None = None
        self.ca: ClusterCA | None = None
        self.worker_auth = "none"
        self.tokens: list[auth.APIToken] | None = None
        self.token_file = ""
        self.state_dir = Path(self["state-dir"]).expanduser()
        self.master_name: str = self["name"] or default_name()
        self._check_store()
        try:
            self.webhook_secret = auth.webhook_secret(
                self["webhook-secret-file"] or self.state_dir / auth.WEBHOOK_SECRET_FILE
            )
        except (OSError, auth.AuthConfigError) as e:
            raise usage.UsageError(str(e)) from None
        if self["no-auth"]:
            if self["worker-auth"] not in (None, "none"):
                raise usage.UsageError("--no-auth admits any worker: drop --worker-auth")
            return
        self.secret_file = self.state_dir / auth.CLUSTER_SECRET_FILE
        self.worker_auth = mode = self._worker_auth()
        try:
            state_dir = self.state_dir = auth.ensure_state_dir(self["state-dir"], secret=mode != "identity")
            if mode != "identity":
                self.secret = auth.read_secret(self.secret_file)
            self.ca = ClusterCA.open(state_dir)
            self.token_file = self["api-token-file"] or str(state_dir / auth.API_TOKEN_FILE)
            # The token the master made itself is the administrator's.
            self.tokens = auth.read_tokens(self.token_file, self.unnamed)
        except (OSError, auth.AuthConfigError, IdentityError) as e:
            raise usage.UsageError(str(e)) from None

    def _worker_auth(self) -> str:
        """
        C{--worker-auth}, or its default: identities only on a new state
        directory, both kinds where a cluster secret is kept (an upgrade
        stops no worker), the secret alone with C{--listen ssl:} (TLS with
        the user's own certificates).
        """
        mode = self["worker-auth"]
        if mode is not None and (mode not in MODES or mode == "none"):
            raise usage.UsageError("--worker-auth is identity, secret or both")
        own_tls = self["listen"].split(":", 1)[0] in ("ssl", "tls")
        if mode is None:
            had_secret = self.secret_file.is_file() and self.secret_file.stat().st_size > 0
            mode = "secret" if own_tls else "both" if had_secret else "identity"
        if own_tls and mode != "secret":
            raise usage.UsageError(
                "--listen ssl: is TLS with your own certificates and the cluster secret"
                " (--worker-auth secret); for identities, --listen tcp: and the master's"
                " own CA makes the TLS"
            )
        return str(mode)


def _announce(options: Options, port: IListeningPort) -> None:
    """Log how to use this master: the auth mode, the token, how workers join."""
    address = join_endpoint(options["listen"], port, options.ca is not None and options.worker_auth != "secret")
    if options.worker_auth == "none":
        log.warn(
            "authentication is OFF (--no-auth): anyone who reaches the API can run"
            " commands on every worker, and any program can join as a worker"
        )
        log.info("workers join with: twistd -n pcci-worker --master {address} --no-auth", address=address)
        return
    log.info("API token in {file}", file=options.token_file)
    if options.worker_auth != "secret":
        log.info(
            "workers join by identity: 'pcci join-token create' prints the line to run on a new"
            " machine (twistd -n pcci-worker --join {address} --token ...)",
            address=address,
        )
    if options.worker_auth != "identity":
        log.info(
            "workers {also}join with: twistd -n pcci-worker --master {address} --secret-file <a copy of {file}>",
            also="also " if options.worker_auth == "both" else "",
            address=join_endpoint(options["listen"], port),  # in the clear, or the user's own TLS
            file=options.secret_file,
        )


#: Set (to anything) in the environment, cron lines take a seconds field
#: first: for tests, which cannot wait minutes.  Not an option: users
#: have no use for it.
CRON_SECONDS = "PCCI_TEST_CRON_SECONDS"


def _running(state: ClusterState, pool_id: str) -> Deferred[bool]:
    return state.history.find(pool_id).addCallback(lambda pool: pool is not None and not pool.finished)


def _nothing_to_reread() -> None:
    log.info("SIGHUP: no tokens file to read again (--no-auth)")


def public_url(api: str, port: IListeningPort) -> str:
    """The dashboard's address as another machine reaches C{port}, the API's."""
    scheme = "https" if api.split(":", 1)[0] in ("ssl", "tls") else "http"
    where = port.getHost()
    # Bound to one address, that is where it is reached; else by this host's name.
    host = getattr(where, "host", "")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{getattr(where, 'port', '')}/"


def _pool_link(base: str) -> Callable[[str], str]:
    return lambda pool_id: f"{base.rstrip('/')}/#/pools/{pool_id}"


#: Connections waiting to be accepted on the worker port, unless --listen
#: says: Twisted's 50 overflows when thousands of workers come back at once
#: after a restart, and the kernel then makes each one it dropped wait
#: seconds (SYN retries: 1, 3, 7, 15, 31 s).  The kernel caps it
#: (net.core.somaxconn).
WORKER_BACKLOG = 4096


def with_backlog(listen: str) -> str:
    """C{listen} with L{WORKER_BACKLOG}, for the endpoints that take one and do not say."""
    if listen.split(":", 1)[0] in ("tcp", "ssl", "unix") and "backlog=" not in listen:
        return f"{listen}:backlog={WORKER_BACKLOG}"
    return listen


def join_endpoint(listen: str, port: IListeningPort, identities: bool = False) -> str:
    """The client endpoint a worker on another machine dials to reach C{port}."""
    where = port.getHost()
    if not hasattr(where, "port"):
        return listen  # a unix socket: the same path
    address = f"{socket.gethostname()}:{where.port}"
    if identities:
        return f"tls:{address}"
    if listen.split(":", 1)[0] in ("ssl", "tls"):
        return f"tls:{address}:trustRoots=<directory of your CA certificate>"
    return f"tcp:{address}"


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    The master: its state (opened at start), the worker port, the REST API
    and, with C{--local-worker}, a worker of this host in the same process.
    Nothing starts a thread or opens a file before C{startService}.
    """
    if reactor is None:
        from twisted.internet import reactor
    store: Store
    if is_postgres_url(options.db_path):
        store = PostgresStore(PostgresDatabase(options.db_path, reactor, options.master_name))
    else:
        store = Store(SQLiteDatabase(options.db_path, reactor))
    tokens = None
    if options.tokens is not None:
        tokens = TokenBook(options.tokens, store.tokens, lambda: auth.read_tokens(options.token_file, options.unnamed))
    daemon.prepare(reactor, on_hangup=tokens.reread if tokens is not None else _nothing_to_reread)
    enrollment = None
    if options.ca is not None:
        enrollment = Enrollment(store.identities, options.ca, time.time, options["approve-workers"])
    peers = None
    if isinstance(store, PostgresStore):
        # What the other masters tell reaches parts built below, once it runs.
        peers = Peers(reactor, store, Notices(
            fenced=lambda: stop_with_error(reactor),
            schedules=lambda: scheduler.reload(),
            tokens=tokens.refresh if tokens is not None else Notices.tokens,
            identity=lambda name: recheck(state.roster, enrollment, name) if enrollment is not None else None,
        ))
    state = ClusterState(
        reactor,
        Settings(
            retention=options["retention"],
            max_pools=options["max-pools"],
            max_output=options["max-output"],
            max_output_total=options["max-output-total"],
            history=options["history"],
            forget_after=options["forget-after"],
            reconnect_grace=options["reconnect-grace"],
            shells=ShellSettings(
                idle=options["shell-idle"],
                max_per_worker=options["max-shells"],
                record_max=0 if options["no-shell-record"] else options["shell-record-max"],
            ),
        ),
        store,
        wall=time.time,
        peers=peers,
    )
    master = MultiService()
    limits = APILimits(
        max_body=options["max-body"],
        max_command=options["max-command"],
        max_workers=options["max-workers"],
        notify_policy=AddressPolicy(tuple(options["notify-allow"])),
        max_push_entries=options["max-push-entries"],
    )
    # A schedule's run starts as the API's POST /job would (the API is built next).
    scheduler = Scheduler(
        reactor, time.time, store.schedules, lambda schedule: api.run_schedule(schedule),
        lambda pool_id: _running(state, pool_id), seconds=bool(os.environ.get(CRON_SECONDS)),
    )
    identities = options.ca is not None and options.worker_auth != "secret"
    install_kit = InstallKit(reactor, options.wheelhouse) if identities else None
    api = MasterAPI(state, MasterMetrics(state), limits, APIParts(tokens, scheduler, enrollment, install_kit))
    notifier = Notifier(
        reactor, time.time, store.deliveries, http_post(reactor, limits.notify_policy),
        Hooks(
            options.webhook_secret, tuple(Hook(url, options["webhook-on"]) for url in options["webhook"]),
            form=options["webhook-format"], output=options["webhook-output"],
        ),
    )
    state.dispatcher.pool_end_hooks.append(notifier.pool_ended)
    notifier.on_result = lambda result: api.metrics.deliveries.labels(result).inc()
    scheduler.on_run = lambda outcome: api.metrics.schedule_runs.labels(outcome).inc()
    StateService(reactor, state, store, tokens, scheduler, notifier).setServiceParent(master)
    local = None
    if options["local-worker"] and options.worker_auth != "none":
        local = (default_name(), secrets.token_hex(32).encode())
    budget = ConnectionBudget.for_file_limit(daemon.file_limit())
    workers = WorkerPortFactory(
        state,
        reactor,
        Gate(options.worker_auth, options.secret, enrollment, local),
        handshake_timeout=options["handshake-timeout"],
        max_frame=options["max-frame"],
        on_joined=lambda connection: worker_limit.prove(connection.outer_transport),
    )
    worker_limit = ConnectionLimit(
        SniffingFactory(workers, options.ca.server_tls if identities and options.ca else None, reactor),
        options["max-connections"],
        reactor,
        budget,
        "workers",
    )
    workers_port = ListeningService(
        reactor, serverFromString(reactor, with_backlog(options["listen"])), worker_limit, "workers"
    )
    workers_port.setServiceParent(master)
    workers_port.when_listening().addCallback(lambda port: _announce(options, port))
    if options["join-address"]:
        api.join_address = f"tls:{options['join-address']}"
    else:
        workers_port.when_listening().addCallback(
            lambda port: setattr(api, "join_address", join_endpoint(options["listen"], port, identities))
        )
    site = AnsweringSite(
        api.resource(),
        requestFactory=bounded_request(options["max-body"], options["max-file"], tokens),
        timeout=options["http-timeout"],
        logFormatter=_access_log_line,
        # The API reads JSON and tar bodies, never HTML forms: no body is
        # parsed as one (Twisted's look at the Content-Type costs 40 µs).
        parsePOSTFormSubmission=False,
    )
    site.noisy = False
    # Twisted types Site.protocol as its own factory function; any callable
    # that makes an HTTP channel does.
    site.protocol = http_channel(  # type: ignore[method-assign,assignment]
        raw_answer(b"400 Bad Request", "the request is not valid HTTP")
    )
    api_port = ListeningService(
        reactor,
        serverFromString(reactor, options["api"]),
        ConnectionLimit(
            site,
            options["max-connections"],
            reactor,
            budget,
            "api",
            receive_timeout=options["http-timeout"],
        ),
        "the REST API",
    )
    api_port.setServiceParent(master)

    def reached_at(url: str) -> None:
        notifier.link = _pool_link(url)
        api.public_url = url
        state.peers.announce(url)

    if options["public-url"]:
        reached_at(options["public-url"])
    else:
        api_port.when_listening().addCallback(lambda port: reached_at(public_url(options["api"], port)))
    if options["local-worker"]:
        name = local[0] if local is not None else default_name()
        WorkerService(
            reactor,
            [LocalPortEndpoint(reactor, workers_port)],
            WorkerSettings(
                name,
                None if local is None else local[1],
                kill_grace=options["kill-grace"],
                max_jobs=options["max-jobs"],
                journal=options.state_dir / f"worker-{name}.jobs.json",
            ),
        ).setServiceParent(master)
    return master
