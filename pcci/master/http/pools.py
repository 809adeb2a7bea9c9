"""
The REST API's pools: start one (C{POST /job}), read them, follow their events, kill, retry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from pcci.master.access import permits
from pcci.master.cluster.dispatch import PoolOrder, SubmitError
from pcci.master.cluster.jobspec import SpecError, parse_query, parse_wait_offline
from pcci.master.cluster.model import RETRIED_STATES, Pool
from pcci.master.cluster.queries import Query
from pcci.master.cluster.targets import TargetError, resolve
from pcci.master.http.base import APIBase, app
from pcci.master.http.common import (
    DEFAULT_PAGE,
    MAX_PAGE,
    POOL_STATES,
    APIError,
    as_object,
    bool_arg,
    int_arg,
    json_answer,
    last_event_id,
    pool_pieces,
    read_json,
    read_object,
    request_token,
    string_list,
    text_arg,
    wait_seconds,
    who_asks,
)
from pcci.master.http.guards import audit
from pcci.master.http.streaming import EventStream, JSONStream, json_list_pieces
from pcci.master.store.base import PoolQuery
from pcci.nodes import fold


class PoolRoutes(APIBase):
    """C{/job}, C{/pool/<id>}, C{/pools}, C{/kill/<id>} (PCCI 1.x's routes) and the pools' others."""

    @app.route("/job", methods=["POST"])
    def submit(self, request: IRequest) -> Deferred[bytes]:
        """
        Start a pool on the workers the body selects; with C{?wait=S}, answer
        once it has ended or S seconds passed, with the pool.  With
        C{?dry_run=true}, check the body and tell which workers it selects,
        starting nothing.
        """
        wait = wait_seconds(request)
        dry_run = bool_arg(request, "dry_run", False)
        body = read_json(request, self.limits.max_body)
        try:
            launch = self.launcher.prepare(request_token(request), body)
        except (SpecError, TargetError) as e:
            raise APIError(400, str(e)) from None
        except permits.Forbidden as e:
            raise self._refuse(request, str(e)) from None
        workers = launch.workers
        if dry_run:
            answer: dict[str, Any] = {"workers": workers, "message": f"would start on {len(workers)} workers"}
            if launch.request.wait_offline is not None:
                answer["offline"] = [name for name in workers if name not in self.roster.links]
            return succeed(json_answer(request, answer))
        return self._start(request, wait, lambda: self.launcher.start(launch, who_asks(request)))

    @app.route("/pool/<string:pool_id>", methods=["GET"])
    def pool_as_list(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """PCCI 1.x's answer: a list holding the pool."""
        d = self._waited(request, pool_id)
        return d.addCallback(
            lambda pool: JSONStream(request, json_list_pieces([pool_pieces(pool)])).start()
        )

    @app.route("/pools/<string:pool_id>", methods=["GET"])
    def pool(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """The pool; C{results=false} leaves its jobs' outputs out."""
        results = bool_arg(request, "results", True)
        d = self._waited(request, pool_id)
        return d.addCallback(
            lambda pool: JSONStream(request, pool_pieces(pool, results)).start()
        )

    @app.route("/pools/<string:pool_id>/events", methods=["GET"])
    def events(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """The pool's events as server-sent events, from C{Last-Event-ID} on."""
        after = last_event_id(request)
        return self._pool(request, pool_id).addCallback(
            lambda pool: EventStream(request, pool, after, self.clock, pool_pieces).start()
        )

    @app.route("/pools", methods=["GET"])
    def pools(self, request: IRequest) -> Deferred[bytes]:
        """
        Pools newest first, a page at a time (C{limit}, then C{before} the
        last id seen, also given in a C{Link: rel="next"} header), filtered
        by C{state}, C{worker} and C{cmd}; C{results=false} leaves outputs out.
        """
        limit = int_arg(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        state = text_arg(request, "state")
        if state is not None and state not in POOL_STATES:
            raise APIError(400, "state must be one of " + ", ".join(POOL_STATES))
        results = bool_arg(request, "results", True)
        submitted_by = text_arg(request, "submitted_by")
        token = request_token(request)
        if token is not None and token.scope is not None:
            if submitted_by not in (None, token.name):
                raise self._refuse(request, "a scoped token sees only the pools it started")
            submitted_by = token.name
        query = PoolQuery(
            before=text_arg(request, "before"),
            state=state,
            worker=text_arg(request, "worker"),
            cmd=text_arg(request, "cmd"),
            submitted_by=submitted_by,
            schedule=text_arg(request, "schedule"),
        )
        d = self.history.page(query, limit + 1)

        def answer(page: list[Pool | dict[str, Any]]) -> Deferred[bytes]:
            if len(page) > limit:
                page = page[:limit]
                query = {
                    k.decode(): v[0].decode("utf-8", "replace")
                    for k, v in request.args.items()
                    if k != b"before"
                }
                last = page[-1]
                query["before"] = last.id if isinstance(last, Pool) else last["id"]
                request.setHeader(
                    b"Link", f'</pools?{urlencode(query)}>; rel="next"'.encode()
                )
            pieces = json_list_pieces(self._listed(entry, results) for entry in page)
            return JSONStream(request, pieces).start()

        return d.addCallback(answer)

    def _listed(self, entry: Pool | dict[str, Any], results: bool) -> Iterator[Any]:
        """A listed pool's pieces: from memory, or its stored summary, or
        (with outputs) its record, loaded when the stream gets to it."""
        if isinstance(entry, Pool):
            yield from pool_pieces(entry, results)
        elif not results:
            yield json.dumps(entry).encode()
        else:
            loading: Deferred[Iterator[bytes]] = self.history.find(entry["id"]).addCallback(
                lambda pool: pool_pieces(pool) if pool is not None else iter([json.dumps(entry).encode()])
            )
            yield loading

    @app.route("/pools/<string:pool_id>/continue", methods=["POST"])
    def continue_pool(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """A pool paused by its rollout (C{pause_every}) goes on."""

        def go_on(pool: Pool) -> bytes:
            if self.history.is_elsewhere(pool):
                raise APIError(409, f"pool {pool_id} runs on another master: continue it there")
            try:
                started = self.dispatcher.resume(pool_id)
            except SubmitError as e:
                raise APIError(409, str(e)) from None
            audit.info("{who} continued pool {pool}", who=who_asks(request) or "anyone (no auth)", pool=pool_id)
            return json_answer(request, {"pool_id": pool_id, "started": started,
                                         "message": f"pool {pool_id} continues: {started} jobs started"})

        return self._pool(request, pool_id).addCallback(go_on)

    @app.route("/kill/<string:pool_id>", methods=["PUT"])
    def kill(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """Kill a pool's jobs: all, or those its C{workers} select."""
        body = read_json(request, self.limits.max_body, required=False)
        return self._pool(request, pool_id).addCallback(self._kill, request, body)

    def _kill(self, pool: Pool, request: IRequest, body: Any) -> Deferred[bytes]:
        pool_id = pool.id
        items = as_object(body).get("workers")
        try:
            workers = None
            if items is not None:
                workers = resolve(
                    string_list(items, "workers", self.limits.max_workers),
                    pool.jobs,
                    self.limits.max_workers,
                    missing=f"workers not in pool {pool_id}",
                )
            if self.history.is_elsewhere(pool):
                # Only masters sharing PostgreSQL show each other's pools.
                assert self.state.peers is not None
                asking = self.state.peers.kill_elsewhere(pool, workers)
            else:
                asking = succeed(self.dispatcher.kill(pool_id, workers))
        except (SubmitError, TargetError) as e:
            raise APIError(400, str(e)) from None

        def asked(names: list[str]) -> bytes:
            audit.info(
                "{who} killed pool {pool} on {workers}",
                who=who_asks(request) or "anyone (no auth)",
                pool=pool_id,
                workers=",".join(names) or "(nothing left running)",
            )
            return json_answer(
                request,
                {"pool_id": pool_id, "workers": names, "message": f"kill sent to {len(names)} jobs"},
            )

        def nobody(failure: Failure) -> bytes:
            failure.trap(LookupError)
            raise APIError(503, f"{failure.getErrorMessage()}: try again in a few seconds")

        return asking.addCallbacks(asked, nobody)

    @app.route("/pools/<string:pool_id>/retry", methods=["POST"])
    def retry(self, request: IRequest, pool_id: str) -> Deferred[bytes]:
        """
        Run a pool's command again on the workers whose job ended other
        than ok (or in the C{states} the body lists): a new pool, answered
        as C{POST /job} answers, that carries C{retry_of}.
        """
        body = read_object(request, self.limits.max_body, required=False)
        unknown = set(body) - {"states", "wait_offline", "query"}
        if unknown:
            raise APIError(400, "a retry takes only states, wait_offline and query, not " + ", ".join(sorted(unknown)))
        states = body.get("states", list(RETRIED_STATES))
        if (
            not isinstance(states, list)
            or not states
            or not all(isinstance(state, str) and state in RETRIED_STATES for state in states)
        ):
            raise APIError(400, "states must be a non-empty list of: " + ", ".join(RETRIED_STATES))
        try:
            wait_offline = parse_wait_offline(body)
            query = parse_query(body)
        except SpecError as e:
            raise APIError(400, str(e)) from None
        wait = wait_seconds(request)
        return self._pool(request, pool_id).addCallback(
            self._retry, request, states, wait_offline, wait, query
        )

    def _retry(
        self, pool: Pool, request: IRequest, states: list[str], wait_offline: float | None, wait: float,
        query: Query | None,
    ) -> Deferred[bytes]:
        if pool.kind != "run":
            raise APIError(409, f"pool {pool.id} moved files: run pcci cp or pcci fetch again instead")
        workers = [name for name, job in pool.jobs.items() if job.state in states]
        if query is not None:  # only those whose facts match, of those
            workers = self.roster.index.chosen(query, (name for name in workers if name in self.roster.records))
        if not workers:
            matching = " matching the query" if query is not None else ""
            raise APIError(409, f"nothing to retry: no job of pool {pool.id} is {' or '.join(states)}{matching}")
        if wait_offline is None:
            wait_offline = pool.wait_offline
        offline = [name for name in workers if name not in self.roster.links]
        if offline and wait_offline is None:
            raise APIError(
                409,
                f"workers offline: {fold(offline)}: retry with wait_offline to run there"
                " when they come back",
            )
        self._permit(request, permits.check_run, pool.cmd, pool.options, pool.notify, self.limits.notify_policy)
        self._select(request, workers, [], [], offline=wait_offline is not None)
        return self._start(
            request,
            wait,
            lambda: self.dispatcher.submit(
                PoolOrder(
                    pool.cmd, pool.options, pool.rollout, who_asks(request), retry_of=pool.id,
                    wait_offline=wait_offline, notify=pool.notify, notify_on=pool.notify_on,
                ),
                workers,
            ),
        )

