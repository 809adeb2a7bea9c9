"""C{pcci cp}: push files and trees to workers, through the master."""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from pcci.cli.client import EXIT_USAGE, CLIError
from pcci.cli.main import Config
from pcci.cli.run import follow_pool


@dataclass
class CopyRequest:
    """What C{pcci cp} was asked."""

    sources: list[str]
    dest: str
    targets: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    recursive: bool = False
    mode: str | None = None
    mkdir: bool = False
    as_json: bool = False

    def query(self) -> dict[str, Any]:
        """The C{POST /files} query: a directory destination when several things go."""
        several = len(self.sources) > 1 or any(os.path.isdir(s) for s in self.sources)
        dest = self.dest if self.dest.endswith("/") or not several else self.dest + "/"
        query: dict[str, Any] = {"dest": dest, "workers": list(self.targets), "labels": list(self.labels),
                                 "exclude": list(self.exclude), "wait": 0}
        if self.mode is not None:
            query["mode"] = self.mode
        if self.mkdir:
            query["mkdir"] = "true"
        return query


def pack(sources: list[str], recursive: bool) -> tuple[IO[bytes], int]:
    """
    The sources as a tar in a temporary file, and its size.  A directory
    goes by its name (C{dir}), or its contents only (C{dir/}), as rsync
    reads them; links go as links.

    @raise CLIError: a missing or unreadable source, a directory without C{-r}.
    """
    spool = tempfile.TemporaryFile()
    try:
        with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for source in sources:
                _add(archive, source, recursive)
    except BaseException:
        spool.close()
        raise
    size = spool.tell()
    return spool, size


def _add(archive: tarfile.TarFile, source: str, recursive: bool) -> None:
    if not os.path.lexists(source):
        raise CLIError(f"{source}: no such file or directory", EXIT_USAGE)
    if os.path.isdir(source) and not os.path.islink(source):
        if not recursive:
            raise CLIError(f"{source} is a directory: copy it with -r", EXIT_USAGE)
        if source.endswith("/"):  # its contents
            for name in sorted(os.listdir(source)):
                _tar(archive, os.path.join(source, name), name)
            return
    _tar(archive, source, os.path.basename(source.rstrip("/")))


def _tar(archive: tarfile.TarFile, path: str, name: str) -> None:
    try:
        archive.add(path, arcname=name, recursive=True, filter=_only_files)
    except OSError as e:
        raise CLIError(f"cannot read {e.filename or path}: {e.strerror}", EXIT_USAGE) from None


def _only_files(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Files, directories and links; owners are the worker's, not this machine's."""
    if not (member.isreg() or member.isdir() or member.issym()):
        return None
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


async def push_files(cfg: Config, request: CopyRequest) -> int:
    spool, size = pack(request.sources, request.recursive)
    try:
        client = cfg.client()
        answer = await client.call("POST", "/files", upload=(spool, size), **request.query())
    finally:
        spool.close()
    return await follow_pool(cfg, client, answer, gather=not request.as_json, diff=False, as_json=request.as_json)
