"""
The REST API's shared part: one Klein app, the state behind it, and its errors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from pcci.master.access import permits
from pcci.master.access.enrollment import Enrollment
from pcci.master.access.tokens import TokenBook
from pcci.master.cluster.dispatch import SubmitError
from pcci.master.cluster.history import StoreUnavailable, TooManyPools
from pcci.master.cluster.launch import Launcher, LaunchLimits
from pcci.master.cluster.model import Pool
from pcci.master.cluster.schedules import (
    Scheduler,
)
from pcci.master.cluster.state import ClusterState
from pcci.master.cluster.targets import TargetError
from pcci.master.http import dashboard
from pcci.master.http.common import (
    COMMAND_CEILING,
    STORE_WAIT,
    APIError,
    APILimits,
    json_answer,
    not_stored,
    request_token,
    started_message,
    submitted_pieces,
    wait_seconds,
    who_asks,
)
from pcci.master.http.guards import TokenGuard, audit, refused
from pcci.master.http.metrics import MasterMetrics
from pcci.master.http.streaming import JSONStream
from pcci.master.install.kit import InstallKit

log = Logger()

app = Klein()


@dataclass(frozen=True)
class APIParts:
    """The master's parts its API reaches besides its state; None: this master runs without."""

    #: The tokens requests need (None: no auth).
    tokens: TokenBook | None = None
    #: The schedules' timers.
    scheduler: Scheduler | None = None
    #: Workers' identities (None: no join tokens).
    enrollment: Enrollment | None = None
    #: What new machines install (None: no installs served).
    install_kit: InstallKit | None = None


class APIBase:
    """
    The state every route reads, what a token may see and do, starting a
    pool, and the errors of every route as JSON.  The routes by noun are
    in the modules beside this one; L{pcci.master.http.api.MasterAPI} puts them together.
    """

    app = app

    def __init__(
        self,
        state: ClusterState,
        metrics: MasterMetrics | None = None,
        limits: APILimits = APILimits(),
        parts: APIParts = APIParts(),
    ) -> None:
        self.clock = state.clock
        self.state = state
        self.roster = state.roster
        self.history = state.history
        self.dispatcher = state.dispatcher
        self.limits = replace(limits, max_command=min(limits.max_command, COMMAND_CEILING))
        self.launcher = Launcher(
            self.roster,
            self.dispatcher,
            LaunchLimits(self.limits.max_command, self.limits.max_workers, self.limits.notify_policy),
        )
        self.metrics = metrics or MasterMetrics(state)
        self.dashboard = dashboard.StaticFiles()
        self.tokens = parts.tokens
        self.scheduler = parts.scheduler
        self.enrollment = parts.enrollment
        self.install_kit = parts.install_kit
        #: The worker port as a joining machine dials it (set once it listens).
        self.join_address = "tls:<master>:7000"
        #: This API as other machines reach it (set once it listens).
        self.public_url = "http://<master>:8080/"

    def resource(self) -> IResource:
        """The API as a web resource; with tokens, only for their bearers."""
        return TokenGuard(self.app.resource(), self.tokens)

    # What a token may see and do (see pcci.scopes)

    @staticmethod
    def _refuse(request: IRequest, message: str, status: int = 403) -> APIError:
        """A refusal to raise, written down as an audit line."""
        refused(request, status, message, request_token(request))
        return APIError(status, message)

    @staticmethod
    def _may_see(request: IRequest, owner: str | None) -> bool:
        """Whether the request's token may see what C{owner} made: a scoped one sees only its own."""
        token = request_token(request)
        return token is None or token.scope is None or owner == token.name

    def _select(
        self,
        request: IRequest,
        names: list[str] | None,
        labels: list[str],
        exclude: list[str],
        offline: bool = False,
    ) -> list[str]:
        """The workers a request selects, within its token's scope (see L{permits})."""
        try:
            return permits.select_workers(
                request_token(request), self.roster, names, labels, exclude, self.limits.max_workers, offline
            )
        except permits.Forbidden as e:
            raise self._refuse(request, str(e)) from None
        except TargetError as e:
            raise APIError(400, str(e)) from None

    def _permit(self, request: IRequest, check: Callable[..., None], *args: Any) -> None:
        """Run a check of L{permits}: what it forbids is a 403, and an audit line."""
        try:
            check(request_token(request), *args)
        except permits.Forbidden as e:
            raise self._refuse(request, str(e)) from None

    def _pool(self, request: IRequest, pool_id: str) -> Deferred[Pool]:
        """A pool the request's token may see (another's is as unknown to a scoped token)."""

        def found(pool: Pool | None) -> Pool:
            missing = f"no pool {pool_id} (unknown, or expired)"
            if pool is None:
                raise APIError(404, missing)
            if not self._may_see(request, pool.submitted_by):
                raise self._refuse(request, missing, 404)
            return pool

        return self.history.find(pool_id).addCallback(found)

    def _start(
        self, request: IRequest, wait: float, submit: Callable[[], Deferred[Pool]]
    ) -> Deferred[bytes]:
        """Start a pool, answered once stored: with C{?wait}, once ended (or C{wait} passed)."""
        try:
            # Answered once stored: a pool id given out survives a crash.  (Its
            # jobs' ends are safe with their workers until the master stores them.)
            d = submit()
        except SubmitError as e:
            raise APIError(400, str(e)) from None
        except TooManyPools as e:
            raise APIError(503, f"{e}: try again when some have finished") from None
        except StoreUnavailable as e:
            raise APIError(503, f"{e}: no new pool is started until it is back") from None
        # A store that stops answering now holds the pool (its jobs run); say so in time.
        d.addTimeout(STORE_WAIT, self.clock, onTimeoutCancel=not_stored)
        # Logged once stored, which also lets the run frames go out first.
        d.addCallback(self._audit_start, who_asks(request))
        if not request.args.get(b"wait"):
            return d.addCallback(
                lambda pool: json_answer(request, {"pool_id": pool.id, "message": started_message(pool)})
            )
        d.addCallback(self.dispatcher.wait, wait)
        return d.addCallback(
            lambda pool: JSONStream(request, submitted_pieces(pool, started_message(pool))).start()
        )

    @staticmethod
    def _audit_start(pool: Pool, who: str | None) -> Pool:
        audit.info(
            "{who} started pool {pool} on {workers}: {cmd}",
            who=who or "anyone (no auth)",
            pool=pool.id,
            workers=",".join(pool.jobs),
            cmd=pool.cmd,
        )
        return pool

    def _waited(self, request: IRequest, pool_id: str) -> Deferred[Pool]:
        wait = wait_seconds(request)
        return self._pool(request, pool_id).addCallback(self.dispatcher.wait, wait)

    # Errors: specific first, then routing errors, then anything unexpected.

    @app.handle_errors(APIError)
    def api_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, APIError)
        return json_answer(request, {"message": error.message, **error.more}, error.status)

    @app.handle_errors(NotFound, MethodNotAllowed, HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException) and error.code is not None
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"Allow", ", ".join(error.valid_methods).encode())
        message = {
            404: "no such route",
            405: f"method {request.method.decode()} not allowed here",
        }.get(error.code, error.description or error.name)
        return json_answer(request, {"message": message}, error.code)

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        log.failure("error answering {uri}", failure, uri=request.uri)
        return json_answer(request, {"message": "internal error, logged by the master"}, 500)
