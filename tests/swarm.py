"""
A swarm of simulated workers: many from one process, each pcci's own
worker connection (handshake included) over the real wire protocol, with
canned health figures and jobs that end at once with status 0, so that
what is measured or shown is the master's, not 10,000 processes'.

Imported by the benchmarks, or run as a process beside a master:

    python tests/swarm.py --secret-file S --count 10000 --prefix sim- tcp:127.0.0.1:7000

prints C{joined N} once every worker is in, then runs until it is ended.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint

from pcci.auth import read_secret
from pcci.clock import StallWatch
from pcci.daemon import raise_file_limit
from pcci.identity import JoinToken, WorkerIdentity, new_key
from pcci.worker.connection import WorkerFactory
from pcci.worker.jobs import HeldJob, JobTable
from pcci.worker.joining import join
from pcci.worker.settings import WorkerSettings

FIGURES = {
    "cpu_ratio": 0.12,
    "load_1m": 0.5,
    "load_5m": 0.4,
    "load_15m": 0.3,
    "memory_used_bytes": 1.5e9,
    "memory_total_bytes": 8e9,
    "disk_used_bytes": 2e10,
    "disk_total_bytes": 6.4e10,
    "temperature_celsius": 51.0,
    "uptime_seconds": 86400.0,
    "jobs_running": 0,
}

#: The kinds of machine the swarm's workers are, in turn.
MACHINES = (
    {"os": {"id": "debian", "family": "debian", "version": "12"}, "arch": "x86_64", "cpus": 8,
     "memory": 32 * 2**30, "gpu": {"count": 0, "vendor": "", "models": []}, "virtualization": "kvm"},
    {"os": {"id": "ubuntu", "family": "debian", "version": "22.04"}, "arch": "x86_64", "cpus": 64,
     "memory": 512 * 2**30, "gpu": {"count": 8, "vendor": "nvidia", "models": ["NVIDIA H100"] * 8},
     "virtualization": "none"},
    {"os": {"id": "raspbian", "family": "debian", "version": "11"}, "arch": "aarch64", "cpus": 4,
     "memory": 4 * 2**30, "gpu": {"count": 0, "vendor": "", "models": []}, "virtualization": "none"},
    {"os": {"id": "rocky", "family": "rhel", "version": "9.3"}, "arch": "x86_64", "cpus": 16,
     "memory": 64 * 2**30, "gpu": {"count": 0, "vendor": "", "models": []}, "virtualization": "vmware"},
)


def facts_of(index: int) -> dict[str, Any]:
    """A simulated worker's facts: one of the kinds of machine, its rack, a kernel and a Python."""
    return {**MACHINES[index % len(MACHINES)], "kernel": "6.1.0-18-amd64", "python": "3.11.2",
            "pcci": "2.0.0", "rack": index // 40, "filesystems": [{"mount": "/", "type": "ext4", "size": 2**38}]}


#: Workers joining at once: below the master's --max-connections (64) of
#: connections from one address still in their handshake.
AT_ONCE = 32


class InstantJobs(JobTable):
    """
    A worker's jobs that end with status 0 as soon as they are asked for,
    but C{sleep N}, which ends N seconds later.
    """

    def run(self, pool_id: str, cmd: str, options: dict[str, Any], sent_ago: float | None = None) -> None:
        held = HeldJob(pool_id, self.max_output)
        held.attached = True
        held.pid = 1
        self.held[pool_id] = held
        self.tell(held, "started", pid=held.pid)
        words = cmd.split()
        if len(words) == 2 and words[0] == "sleep":
            self.reactor.callLater(float(words[1]), self._end, held)
        else:
            self._end(held)

    def _end(self, held: HeldJob) -> None:
        held.end = (0, None)
        self.tell_end(held)


class KeptInMemory(WorkerIdentity):
    """A simulated worker's identity: its certificate is not written anywhere."""

    def save(self) -> None:
        pass


async def identities(reactor: Any, description: str, token: str, names: list[str]) -> dict[str, WorkerIdentity]:
    """
    An identity for each of C{names}, joined with C{token} (a token of as
    many uses) as a real worker joins.  The swarm shares one key: making a
    key is each real worker's own cost, not the master's.
    """
    key = new_key()
    parsed = JoinToken.parse(token)
    made: dict[str, WorkerIdentity] = {}

    async def one(name: str) -> None:
        identity = KeptInMemory(Path("/nonexistent"), name, key)
        await join(reactor, description, parsed, identity)
        made[name] = identity

    for start in range(0, len(names), AT_ONCE):
        await defer.gatherResults(
            [defer.ensureDeferred(one(name)) for name in names[start:start + AT_ONCE]], consumeErrors=True,
        )
    return made


async def connect(
    reactor: Any, endpoint: IStreamClientEndpoint, secret: bytes | None, names: list[str],
    heartbeat: float, jobs: type[JobTable] = JobTable,
    identities: dict[str, WorkerIdentity] | None = None, facts: bool = True,
) -> list[WorkerFactory]:
    """
    Workers C{names} joined to the master at C{endpoint} (with the secret,
    or over mutual TLS with C{identities}), C{AT_ONCE} at a time.  They
    share one stall watch, as one process stalls as a whole (10,000 of
    them ticking twice a second would be the simulator's load).  Each tells
    the facts of one of L{MACHINES} (none without C{facts}).
    """
    stall = StallWatch(reactor)
    position = {name: i for i, name in enumerate(names)}

    async def join(name: str) -> WorkerFactory:
        identity = None if identities is None else identities[name]
        settings = WorkerSettings(name, secret, heartbeat=heartbeat)
        factory = WorkerFactory(
            reactor, settings, jobs(reactor, settings), identity,
            collect=lambda disk, running: defer.succeed(dict(FIGURES)),
        )
        factory.stall = stall
        canned = facts_of(position[name]) if facts else {}
        factory.gather_facts = lambda: defer.succeed(canned)
        dial = endpoint if identity is None else wrapClientTLS(identity.client_tls(), endpoint)
        connection = await dial.connect(factory)
        await connection.joined
        return factory

    factories: list[WorkerFactory] = []
    for start in range(0, len(names), AT_ONCE):
        batch = [defer.ensureDeferred(join(name)) for name in names[start:start + AT_ONCE]]
        factories.extend(await defer.gatherResults(batch, consumeErrors=True))
    return factories


def disconnect(factories: list[WorkerFactory]) -> None:
    for factory in factories:
        if factory.connection is not None:
            factory.connection.close()


async def swarm(reactor: Any, args: argparse.Namespace) -> None:
    names = [f"{args.prefix}{i:05d}" for i in range(args.count)]
    endpoint = clientFromString(reactor, args.master)
    await connect(reactor, endpoint, read_secret(Path(args.secret_file)), names, args.heartbeat, InstantJobs)
    print(f"joined {len(names)}", flush=True)
    await defer.Deferred()  # until the process is ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("master", help="the master's worker port, as a client endpoint")
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--prefix", default="sim-")
    parser.add_argument("--heartbeat", type=float, default=60.0)
    args = parser.parse_args()
    raise_file_limit()
    task.react(lambda reactor: defer.ensureDeferred(swarm(reactor, args)))


if __name__ == "__main__":
    sys.exit(main())
