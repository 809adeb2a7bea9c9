"""
The REST API's workers (C{/workers}, C{/workers/<name>}), and their
upgrades from this master (C{/workers/upgrade}, see
L{pcci.master.cluster.upgrades}).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

from pcci.master.cluster.upgrades import DEFAULT_DEADLINE, batch_size
from pcci.master.http.base import APIBase, app
from pcci.master.http.common import (
    APIError,
    bool_arg,
    json_answer,
    read_object,
    request_scope,
    request_token,
    string_list,
    who_asks,
)
from pcci.master.install.kit import Kit
from pcci.request import no_such_fields, unknown_fields

#: Names, globs or labels a rollout's request may list.
MAX_TARGETS = 10_000


#: The fields of C{POST /workers/upgrade}.
UPGRADE_FIELDS = ("workers", "labels", "exclude", "batch", "deadline")


class WorkerRoutes(APIBase):
    """The workers this master knows, with their health."""

    @app.route("/workers", methods=["GET"])
    def workers(self, request: IRequest) -> bytes:
        """Connected workers; with C{?all=true}, also those seen and now offline."""
        every = bool_arg(request, "all", False)
        scope = request_scope(request)
        records = [
            r for r in self.roster.records.values()
            if (every or r.online) and (scope is None or scope.allows_worker(r.name, r.labels))
        ]
        return json_answer(
            request,
            [r.to_json(self.roster.running_jobs(r.name)) for r in records],
        )

    @app.route("/workers/<string:name>", methods=["GET"])
    def worker(self, request: IRequest, name: str) -> bytes:
        """One worker, its latest figures and their history."""
        record = self.roster.records.get(name)
        scope = request_scope(request)
        if record is None or (scope is not None and not scope.allows_worker(name, record.labels)):
            raise APIError(404, f"no worker {name} has been seen")
        body = record.to_json(self.roster.running_jobs(name))
        body["history"] = record.history.columns()
        return json_answer(request, body)


    @app.route("/workers/upgrade", methods=["POST"])
    def workers_upgrade(self, request: IRequest) -> Deferred[bytes]:
        """
        Upgrade workers to this master's version, C{batch} at a time: 202,
        the rollout to follow at C{GET /workers/upgrade/<id>}.
        """
        token = request_token(request)
        if token is not None and not token.admin:
            raise self._refuse(request, "only a full token without a scope may upgrade workers")
        if self.install_kit is None:
            raise APIError(409, "this master serves no install kit (--no-auth, or --worker-auth secret)")
        body = read_object(request, self.limits.max_body, required=False)
        unknown = unknown_fields(body, UPGRADE_FIELDS)
        if unknown:
            raise APIError(400, no_such_fields("an upgrade", unknown))
        names = None if body.get("workers") is None else string_list(body["workers"], "workers", MAX_TARGETS)
        labels = [] if body.get("labels") is None else string_list(body["labels"], "labels", MAX_TARGETS)
        exclude = [] if body.get("exclude") is None else string_list(body["exclude"], "exclude", MAX_TARGETS)
        deadline = body.get("deadline", DEFAULT_DEADLINE)
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 1 <= deadline <= 3600:
            raise APIError(400, "deadline is seconds the new version has to reach a master: 1 to 3600")
        if names is None and not labels:
            names = ["*"]  # every worker the token may use
        chosen = self._select(request, names, labels, exclude)
        try:
            size = batch_size(body.get("batch", len(chosen)), len(chosen))
        except ValueError as e:
            raise APIError(400, str(e)) from None

        def start(kit: Kit) -> bytes:
            base = self.public_url.rstrip("/")
            order = {
                "version": kit.version, "wheel": kit.wheel.name, "url": f"{base}/dist/{kit.wheel.name}",
                "sha256": kit.wheel.sha256,
                "wheelhouse": {name: sha256 for name, (_, sha256) in kit.wheelhouse.items()},
                "find_links": f"{base}/wheelhouse/" if kit.wheelhouse else "", "deadline": float(deadline),
            }
            rollout = self.state.upgrades.start(chosen, size, order, who_asks(request) or "admin")
            return json_answer(request, {
                **rollout.to_json(), "message": f"upgrading {len(chosen)} workers to {kit.version}, {size} at a time",
            }, 202)

        return self.install_kit.get().addCallback(start)

    @app.route("/workers/upgrade/<string:rollout_id>", methods=["GET"])
    def workers_upgrade_status(self, request: IRequest, rollout_id: str) -> bytes:
        """How a rollout goes: each worker's state, the version it runs, and why it did not upgrade."""
        rollout = self.state.upgrades.rollouts.get(rollout_id)
        if rollout is None:
            raise APIError(404, f"no upgrade {rollout_id} (unknown, or long ended)")
        return json_answer(request, rollout.to_json())
