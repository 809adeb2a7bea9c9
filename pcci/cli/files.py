"""C{pcci cp} and C{pcci fetch}: files and trees to and from workers, through the master."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlencode

from pcci.cli.client import EXIT_USAGE, CLIError
from pcci.cli.config import Config
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
    owner: str | None = None
    mkdir: bool = False
    as_json: bool = False

    def query(self) -> dict[str, Any]:
        """The C{POST /files} query: a directory destination when several things go."""
        several = len(self.sources) > 1 or any(os.path.isdir(s) for s in self.sources)
        dest = self.dest if self.dest.endswith("/") or not several else self.dest + "/"
        query = {"dest": dest, **_chosen(self.targets, self.labels, self.exclude)}
        for key in ("mode", "owner"):
            if getattr(self, key) is not None:
                query[key] = getattr(self, key)
        if self.mkdir:
            query["mkdir"] = "true"
        return query


def _chosen(targets: tuple[str, ...], labels: tuple[str, ...], exclude: tuple[str, ...]) -> dict[str, Any]:
    """The query's workers, as -w, -l and -x chose them; answered at once, with the pool."""
    return {"workers": list(targets), "labels": list(labels), "exclude": list(exclude), "wait": 0}


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


class Sending:
    """The archive as it goes to the master, with a progress line on a terminal."""

    def __init__(self, file: IO[bytes], size: int, terminal: Any) -> None:
        self.file = file
        self.size = size
        self.sent = 0
        self.terminal = terminal

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.sent += len(data)
        shown = f"sending {self.sent / 2**20:.1f} of {self.size / 2**20:.1f} MiB"
        self.terminal.progress([(shown, "bold")])
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.sent = 0
        return self.file.seek(offset, whence)


async def push_files(cfg: Config, request: CopyRequest) -> int:
    spool, size = pack(request.sources, request.recursive)
    terminal = cfg.terminal()
    try:
        client = cfg.client()
        upload: Any = Sending(spool, size, terminal)
        answer = await client.call("POST", "/files", upload=(upload, size), **request.query())
    finally:
        terminal.done()
        spool.close()
    return await follow_pool(cfg, client, answer, gather=not request.as_json, diff=False, as_json=request.as_json)


@dataclass
class FetchRequest:
    """What C{pcci fetch} was asked."""

    path: str
    dest: str
    targets: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    recursive: bool = False
    as_json: bool = False

    def query(self) -> dict[str, Any]:
        query = {"path": self.path, **_chosen(self.targets, self.labels, self.exclude)}
        if self.recursive:
            query["recursive"] = "true"
        return query


async def fetch_files(cfg: Config, request: FetchRequest) -> int:
    """Fetch, then download each worker's archive into DEST/<worker>/, written whole or not at all."""
    client = cfg.client()
    # ("path" is the call's own argument: the query goes in the path.)
    answer = await client.call("POST", "/fetches?" + urlencode(request.query(), doseq=True))
    status = await follow_pool(cfg, client, answer, gather=not request.as_json, diff=False, as_json=request.as_json)
    pool = await client.call("GET", f"/pools/{answer['pool_id']}")
    for job in pool["jobs"]:
        if job["state"] == "ok":
            worker = job["worker_id"]
            with tempfile.TemporaryFile() as archive:
                await client.download(f"/fetches/{pool['id']}/{worker}", archive)
                archive.seek(0)
                unpack(archive, os.path.join(request.dest, worker))
    return status


def unpack(archive: IO[bytes], into: str) -> None:
    """
    Extract a fetched archive under C{into}: through a temporary directory
    beside it, each file then renamed into place (a reader sees the old
    file or the new one); tarfile's C{data} filter refuses what would
    leave C{into}.
    """
    os.makedirs(into, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".pcci-fetch-", dir=into)
    try:
        with tarfile.open(fileobj=archive, mode="r:") as tar:
            tar.extractall(staging, filter="data")
        for directory, names, files in os.walk(staging):
            relative = os.path.relpath(directory, staging)
            target = os.path.normpath(os.path.join(into, relative))
            os.makedirs(target, exist_ok=True)
            for name in files + [n for n in names if os.path.islink(os.path.join(directory, n))]:
                os.replace(os.path.join(directory, name), os.path.join(target, name))
    except (tarfile.TarError, OSError) as e:
        raise CLIError(f"cannot write under {into}: {e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
