"""
The REST API's files: pushes (C{POST /files}) and fetches (C{/fetches}).
"""

from __future__ import annotations

import io
from typing import NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from pcci.master.access import permits
from pcci.master.cluster.dispatch import PoolOrder
from pcci.master.http.base import APIBase, app
from pcci.master.http.common import (
    VALID_OWNER,
    APIError,
    absolute_path_arg,
    bool_arg,
    list_arg,
    text_arg,
    wait_seconds,
    who_asks,
)
from pcci.master.http.guards import ARCHIVE_TYPE
from pcci.master.transfers.fetches import Fetch
from pcci.master.transfers.pushes import Archive, ArchiveError, Destination, Push, Spool, read_archive


class FileRoutes(APIBase):
    """Files pushed to workers and fetched from them."""

    @app.route("/files", methods=["POST"])
    def push(self, request: IRequest) -> Deferred[bytes]:
        """
        Push the files of a tar body to the workers the query selects, under
        C{dest} (C{pcci cp}): a pool whose jobs are the transfers.
        """
        kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if kind != ARCHIVE_TYPE:
            raise APIError(415, "send the files as a tar archive with Content-Type: application/x-tar")
        dest = absolute_path_arg(request, "dest")
        mode = text_arg(request, "mode")
        try:
            chosen = None if mode is None else int(mode, 8)
        except ValueError:
            chosen = -1
        if chosen is not None and not 0 <= chosen <= 0o7777:
            raise APIError(400, "mode must be octal, 0 to 7777")
        owner = text_arg(request, "owner")
        if owner is not None and not VALID_OWNER.match(owner):
            raise APIError(400, "owner must be USER or USER:GROUP")
        wait = wait_seconds(request)
        self._permit(request, permits.check_files)
        workers = self._selected(request)
        # The spooled body is the push's now: the request lets it go.
        spool, request.content = Spool(request.content), io.BytesIO()

        def archived(archive: Archive) -> Deferred[bytes]:
            mkdir = bool_arg(request, "mkdir", False)
            push = Push(self.state.reports, spool, archive, Destination(dest, mkdir, chosen, owner), self.state.pushes)
            cmd = f"push {len(archive.entries)} entries ({archive.size} bytes) to {dest}"
            try:
                return self._start(
                    request, wait, lambda: self.dispatcher.submit(
                        PoolOrder(cmd, submitted_by=who_asks(request), start=push.start, kind="push"), workers
                    )
                )
            except APIError:
                spool.close()
                raise

        def refused(failure: Failure) -> NoReturn:
            spool.close()
            failure.trap(ArchiveError)
            raise APIError(400, failure.getErrorMessage())

        return deferToThread(read_archive, spool, self.limits.max_push_entries).addCallbacks(archived, refused)

    @app.route("/fetches", methods=["POST"])
    def fetch(self, request: IRequest) -> Deferred[bytes]:
        """
        Read C{path} on the workers the query selects (C{pcci fetch}): a
        pool whose jobs gather what each worker sends into an archive.
        """
        path = absolute_path_arg(request, "path")
        recursive = bool_arg(request, "recursive", False)
        self._permit(request, permits.check_files)
        workers = self._selected(request)
        fetch = Fetch(self.state.reports, self.clock, path, recursive, self.state.fetches)
        cmd = f"fetch {path}" + (" (recursive)" if recursive else "")
        return self._start(
            request,
            wait_seconds(request),
            lambda: self.dispatcher.submit(
                PoolOrder(cmd, submitted_by=who_asks(request), start=fetch.start, kind="fetch"), workers
            ),
        )

    @app.route("/fetches/<string:pool_id>/<string:worker>", methods=["GET"])
    def fetched(self, request: IRequest, pool_id: str, worker: str) -> Deferred[bytes]:
        """What a worker sent for a fetch, as a tar archive, once its job has ended."""
        fetch = self.state.fetches.get(pool_id)
        archive = None if fetch is None else fetch.archives.get(worker)
        pool = self.history.pools.get(pool_id)
        if fetch is None or archive is None or pool is None or not self._may_see(request, pool.submitted_by):
            raise APIError(404, f"no archive of {worker} for pool {pool_id} (unknown, or expired)")
        if archive.job.status is None:
            raise APIError(409, f"{worker} is still sending: ask again once its job has ended")
        archive.file.seek(0, 2)
        size = archive.file.tell()
        archive.file.seek(0)
        request.setHeader(b"Content-Type", b"application/x-tar")
        request.setHeader(b"Content-Length", str(size).encode())
        # Read from the local disk as the client takes it: bounded reads.
        return FileSender().beginFileTransfer(archive.file, request).addCallback(lambda _: b"")

    def _selected(self, request: IRequest) -> list[str]:
        """The workers a query's C{workers}, C{labels} and C{exclude} select."""
        names, labels = list_arg(request, "workers"), list_arg(request, "labels")
        if not names and not labels:
            raise APIError(400, "choose workers with workers= or labels=")
        return self._select(request, names or None, labels, list_arg(request, "exclude"))

