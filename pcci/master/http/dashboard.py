"""
The web dashboard: static files shipped in C{pcci/master/http/static/}, served
at C{/} (the page) and C{/ui/} (its scripts and styles) of the API port.

The files need no token; the page asks for one and sends it, as a Bearer
header, with each call to the JSON API, which is the only thing that feeds
it.  The headers that keep a page safe, and which paths need no token,
are in L{pcci.master.http.guards}.

The files are a few tens of kilobytes, read once when the master starts:
served from memory, no path can reach anything but them, and answers need
no file producer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from pcci.master.http.guards import json_error

#: The page's files: HTML, CSS and JavaScript modules, no build step.
STATIC_DIR = Path(__file__).parent / "static"

MEDIA_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
}


class StaticFile:
    """One file of the page, as it is served."""

    def __init__(self, path: Path) -> None:
        self.body = path.read_bytes()
        self.media_type = MEDIA_TYPES.get(path.suffix, b"application/octet-stream")
        self.etag = b'"%s"' % hashlib.sha256(self.body).hexdigest()[:20].encode()


class StaticFiles(Resource):
    """
    The page's files by their path under L{STATIC_DIR}; the empty path is
    C{index.html}.  Browsers check them again on each load (C{no-cache},
    with an C{ETag}), so an upgraded master serves its new page.
    """

    isLeaf = True

    def __init__(self, directory: Path = STATIC_DIR) -> None:
        super().__init__()
        self.files = {
            str(path.relative_to(directory)): StaticFile(path)
            for path in directory.rglob("*")
            if path.is_file() and path.suffix in MEDIA_TYPES
        }

    def render_GET(self, request: IRequest) -> bytes:
        name = b"/".join(request.postpath).decode("utf-8", "replace") or "index.html"
        found = self.files.get(name)
        if found is None:
            return json_error(request, 404, "no such file")
        request.setHeader(b"Content-Type", found.media_type)
        request.setHeader(b"Cache-Control", b"no-cache")
        if request.setETag(found.etag):  # the browser's copy is current: 304
            return b""
        return found.body
