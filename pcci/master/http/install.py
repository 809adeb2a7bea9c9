"""
The REST API's routes for new machines, readable without a token (they
hold no secret): C{/install.sh}, the master's wheel under C{/dist/}, and
the C{--wheelhouse} under C{/wheelhouse/}.  The two folders are pages of
links, as pip's C{--find-links} reads them.  See L{pcci.master.install}.
"""

from __future__ import annotations

import html
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.static import File

from pcci.master.http.base import APIBase, app
from pcci.master.http.common import APIError
from pcci.master.install.kit import Kit


def link_page(title: str, links: dict[str, str]) -> bytes:
    """A page of links to files, each with its hash (C{#sha256=…}, which pip checks)."""
    items = "".join(
        f'<a href="{html.escape(name)}#sha256={sha256}">{html.escape(name)}</a><br>\n'
        for name, sha256 in sorted(links.items())
    )
    head = f"<!DOCTYPE html>\n<html><head><title>{html.escape(title)}</title></head><body>\n"
    return (head + items + "</body></html>\n").encode()


class InstallRoutes(APIBase):
    """What the one line a join token comes with fetches."""

    def _kit(self) -> Deferred[Kit]:
        if self.install_kit is None:
            raise APIError(404, "this master serves no install kit")
        return self.install_kit.get()

    @app.route("/install.sh", methods=["GET"])
    def install_script(self, request: IRequest) -> Deferred[bytes]:
        """The install script, with the hashes of the wheel and wheelhouse it installs written in."""

        def answer(kit: Kit) -> bytes:
            request.setHeader(b"Content-Type", b"text/x-shellscript; charset=utf-8")
            request.setHeader(b"Cache-Control", b"no-cache")
            return kit.script

        return self._kit().addCallback(answer)

    @app.route("/dist/", methods=["GET"])
    def dist_index(self, request: IRequest) -> Deferred[bytes]:
        """A page linking the master's wheel."""

        def answer(kit: Kit) -> bytes:
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return link_page("pcci", {kit.wheel.name: kit.wheel.sha256})

        return self._kit().addCallback(answer)

    @app.route("/dist/<string:name>", methods=["GET"])
    def dist_file(self, request: IRequest, name: str) -> Deferred[bytes]:
        """The master's own wheel, of the version it runs."""

        def answer(kit: Kit) -> bytes:
            if name != kit.wheel.name:
                raise APIError(404, f"no {name} here: this master serves {kit.wheel.name}")
            request.setHeader(b"Content-Type", b"application/octet-stream")
            return kit.wheel.data

        return self._kit().addCallback(answer)

    @app.route("/wheelhouse/", methods=["GET"])
    def wheelhouse_index(self, request: IRequest) -> Deferred[bytes]:
        """A page linking each file of the --wheelhouse (none without one)."""

        def answer(kit: Kit) -> bytes:
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return link_page("wheelhouse", {name: sha256 for name, (_, sha256) in kit.wheelhouse.items()})

        return self._kit().addCallback(answer)

    @app.route("/wheelhouse/<string:name>", methods=["GET"])
    def wheelhouse_file(self, request: IRequest, name: str) -> Deferred[Any]:
        """One file of the --wheelhouse, streamed from disk."""

        def answer(kit: Kit) -> File:
            found = kit.wheelhouse.get(name)
            if found is None:
                raise APIError(404, f"no {name} in this master's wheelhouse")
            return File(str(found[0]), defaultType="application/octet-stream")

        return self._kit().addCallback(answer)
