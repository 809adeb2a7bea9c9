"""
Files to and from workers (C{pcci cp}, C{pcci fetch}): what travels, and
which paths may be written.

A push is a pool whose jobs are transfers.  The master sends each worker
the entries (files, directories, symbolic links, with their modes, times
and SHA-256), in C{put} frames; the worker answers which files it needs
(C{put_need}: those not already there, identical); the master sends their
bytes in pieces of at most L{CHUNK} bytes, each raw after a C{put_data}
frame that gives its size, never more than L{WINDOW} bytes ahead of what
the worker says it wrote (C{put_ack}), so a large push never fills a
connection that also carries heartbeats, jobs' output and kills.  A fetch
runs the other way (C{get}, C{get_entries}, C{get_data}, C{get_ack}).
See C{docs/protocol.md}.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

#: Bytes of a file after one C{put_data} frame, at most: they follow it
#: raw, not as a frame (no encoding to pay for), and never exceed the
#: smallest frame a daemon may be set to accept.
CHUNK = 256 * 1024

#: Bytes the master may send a worker ahead of what the worker wrote.
WINDOW = 4 * CHUNK

#: Characters of entries in one C{put} frame, about.
ENTRIES_PER_FRAME = 64 * 1024

#: Paths in one C{put_need} frame, at most.
NEED_PER_FRAME = 1000

KINDS = ("file", "dir", "link")


class UnsafePath(ValueError):
    """A path that would leave the destination, or is no path at all."""


def safe_path(path: str) -> str:
    """
    C{path} as written under a destination: relative, no C{..}, no empty
    or C{.} parts, no NUL.

    @raise UnsafePath: otherwise, whoever sent it.
    """
    if not path or "\0" in path or path.startswith("/"):
        raise UnsafePath(f"refused path {path!r}: not a relative path")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(f"refused path {path!r}: it would leave the destination")
    return path


@dataclass(frozen=True)
class Entry:
    """One thing pushed: a file, a directory or a symbolic link, by its path under the destination."""

    path: str
    kind: str
    size: int = 0
    mode: int = 0o644
    mtime: float = 0.0
    sha256: str = ""
    #: A link's target, as is (a link is created, never followed).
    target: str = ""

    def wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"path": self.path, "kind": self.kind, "mode": self.mode, "mtime": self.mtime}
        if self.kind == "file":
            body.update(size=self.size, sha256=self.sha256)
        elif self.kind == "link":
            body["target"] = self.target
        return body

    @classmethod
    def from_wire(cls, body: Any) -> Entry:
        """
        An entry as a C{put} frame carries it, checked.

        @raise ValueError: a malformed entry, or an unsafe path (L{UnsafePath}).
        """
        if not isinstance(body, dict) or body.get("kind") not in KINDS:
            raise ValueError("an entry must be an object with a kind of file, dir or link")
        path = body.get("path")
        path = safe_path(path if isinstance(path, str) else "")
        mode, mtime = body.get("mode"), body.get("mtime")
        if not isinstance(mode, int) or not 0 <= mode <= 0o7777 or not isinstance(mtime, (int, float)):
            raise ValueError(f"entry {path!r}: a mode (0 to 0o7777) and an mtime are needed")
        entry = cls(path, body["kind"], mode=mode, mtime=float(mtime))
        if entry.kind == "file":
            size, digest = body.get("size"), body.get("sha256")
            if not isinstance(size, int) or size < 0 or not isinstance(digest, str) or len(digest) != 64:
                raise ValueError(f"entry {path!r}: a file needs a size and a SHA-256")
            return cls(path, "file", size, mode, float(mtime), digest)
        if entry.kind == "link":
            target = body.get("target")
            if not isinstance(target, str) or not target or "\0" in target:
                raise ValueError(f"entry {path!r}: a link needs a target")
            return cls(path, "link", mode=mode, mtime=float(mtime), target=target)
        return entry


def batches(entries: list[Entry]) -> Iterator[list[dict[str, Any]]]:
    """The entries' wire forms, in batches of about L{ENTRIES_PER_FRAME} characters."""
    batch: list[dict[str, Any]] = []
    size = 0
    for entry in entries:
        wire = entry.wire()
        batch.append(wire)
        size += len(entry.path) + len(entry.target) + 120
        if size >= ENTRIES_PER_FRAME:
            yield batch
            batch, size = [], 0
    yield batch


def file_mode(mode: int) -> int:
    """The permission bits of a C{st_mode}."""
    return stat.S_IMODE(mode)


def os_reason(error: BaseException | None, path: str = "") -> str:
    """An error as one line: the OS's reason after the path it concerns."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename or path}: {error.strerror}"
    return str(error)


def report_end(report: Callable[..., None], status: int, text: str, reason: str | None = None) -> None:
    """A transfer's end, said as a job's: its one line of output, then C{ended}."""
    report("output", data=text, stream="stdout" if status == 0 else "stderr")
    fields: dict[str, Any] = {"status": status}
    if reason is not None:
        fields["reason"] = reason
    report("ended", **fields)
