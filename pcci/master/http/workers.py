"""
The REST API's workers (C{/workers}, C{/workers/<name>}).
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from pcci.master.http.base import APIBase, app
from pcci.master.http.common import (
    APIError,
    bool_arg,
    json_answer,
    request_scope,
)


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

