"""
The REST API's routes about itself: the dashboard, C{/whoami}, C{/health}, C{/openapi.json}, C{/metrics}.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from pcci.master.http.base import APIBase, app
from pcci.master.http.common import (
    json_answer,
    request_token,
)
from pcci.master.http.metrics import CONTENT_TYPE
from pcci.master.http.openapi import openapi_document


class MetaRoutes(APIBase):
    """The dashboard and what describes the API and the master."""

    @app.route("/", methods=["GET"])
    def page(self, request: IRequest) -> IResource:
        """The dashboard (see L{pcci.master.http.dashboard})."""
        return self.dashboard

    @app.route("/ui/", branch=True, methods=["GET"])
    def page_files(self, request: IRequest) -> IResource:
        return self.dashboard

    @app.route("/whoami", methods=["GET"])
    def whoami(self, request: IRequest) -> bytes:
        """The token the request came with: its name, and what it may do."""
        token = request_token(request)
        body: dict[str, Any]
        if token is None:
            body = {"name": None, "read_only": False, "scope": None}
        else:
            body = token.describe()
        body["auth"] = self.tokens is not None
        body["admin"] = token is None or token.admin
        return json_answer(request, body)

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """For load balancers and monitoring: needs no token, tells nothing."""
        return json_answer(request, {"status": "ok"})

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        return json_answer(request, openapi_document())

    @app.route("/metrics", methods=["GET"])
    def metrics_text(self, request: IRequest) -> bytes:
        """Prometheus text format."""
        request.setHeader(b"Content-Type", CONTENT_TYPE.encode())
        return self.metrics.render()

