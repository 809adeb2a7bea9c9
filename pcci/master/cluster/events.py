"""
A pool's events: what happened to it, numbered, read back from its jobs.

Every event of a pool has an id, 1, 2, 3... in the order the master saw
it: a job C{started}, its C{output}, C{ended}, and last the C{pool} itself.
The master keeps no separate log of them: they are read back from the
jobs, whose output is capped, so a replay holds exactly what the master
still holds, with a C{dropped} event where output was dropped.

The server-sent event stream that carries them to a client is
L{pcci.master.http.streaming.EventStream}.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Protocol

from pcci.output import Chunk, OutputBuffer


class Event(NamedTuple):
    """One event of a pool."""

    id: int
    name: str
    data: dict[str, Any]


class Job(Protocol):
    """What a pool's events are read from, of a job (L{pcci.master.cluster.model.Job})."""

    worker_id: str
    started_event: int
    ended_event: int
    output: OutputBuffer

    def started_data(self) -> dict[str, Any]: ...

    def ended_data(self) -> dict[str, Any]: ...


class Pool(Protocol):
    """What a pool's events are read from, of a pool (L{pcci.master.cluster.model.Pool})."""

    @property
    def jobs(self) -> Mapping[str, Job]: ...


def job_events(job: Job, after: int) -> Iterator[Event]:
    """A job's events with ids above C{after}, from what the master holds."""
    if job.started_event > after:
        yield Event(job.started_event, "started", job.started_data())
    for piece in job.output.chunks(after):
        if isinstance(piece, Chunk):
            yield Event(piece.event, "output", output_data(job, piece.text, piece.stream))
        else:
            yield Event(
                piece.event, "dropped", {"worker": job.worker_id, "bytes": piece.size}
            )
    if job.ended_event > after:
        yield Event(job.ended_event, "ended", job.ended_data())


def output_data(job: Job, text: str, stream: str) -> dict[str, Any]:
    return {"worker": job.worker_id, "stream": stream, "data": text}


def pool_events(pool: Pool, after: int = 0) -> Iterator[Event]:
    """Every job event of C{pool} above C{after}, in id order."""
    return heapq.merge(
        *(job_events(job, after) for job in pool.jobs.values()), key=lambda e: e.id
    )
