"""
Shells through the master, in one run on this machine (a master and
--workers workers on loopback), against the goals of issue 33:

- keystroke round trip (a byte typed, its echo back from `cat`), through
  the master: p50 and p99 over --keys keystrokes, goal p50 at most 5 ms;
- `cat` of a --size MiB text file (base64 lines: what a log is like)
  through a shell, as `pcci shell` reads it: MB/s with a terminal and
  without, goal at least 50 MB/s;
- --shells shells open at once over the workers: the master's RSS over
  its RSS before, goal at most +100 MiB.

The user's side is autobahn's WebSocket client on this process's reactor,
as `pcci shell`'s is.

    python bench/shell.py --workers 10 --shells 100 --size 100
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import psutil
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, reactor, task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster

_reactor: object = reactor


class Shell(WebSocketClientProtocol):
    """A shell as a bench drives it: bytes in, counted bytes out, its end."""

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.factory.received(payload[1:])
        elif json.loads(payload)["type"] == "ended" and not self.factory.ended.called:
            self.factory.ended.callback(None)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(RuntimeError(reason))
        if not self.factory.ended.called:
            self.factory.ended.callback(None)

    def type(self, data: bytes) -> None:
        self.sendMessage(b"\x00" + data, isBinary=True)


class ShellFactory(WebSocketClientFactory):
    protocol = Shell

    def __init__(self, cluster: Cluster, worker: str, **query: str) -> None:
        url = f"ws://127.0.0.1:{cluster.api_port}/workers/{worker}/shell?{urlencode(query)}"
        super().__init__(url, headers={"Authorization": f"Bearer {cluster.token}"})
        self.opened: defer.Deferred[Shell] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.count = 0
        self.waiting: defer.Deferred[None] | None = None

    def received(self, data: bytes) -> None:
        self.count += len(data)
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(None)


def open_shell(cluster: Cluster, worker: str, **query: str) -> ShellFactory:
    factory = ShellFactory(cluster, worker, **query)
    connectWS(factory)
    return factory


@defer.inlineCallbacks
def keystrokes(cluster: Cluster, keys: int):  # type: ignore[no-untyped-def]
    factory = open_shell(cluster, "w0", cmd="cat", pty="false")
    shell = yield factory.opened
    times = []
    for _ in range(keys):
        factory.waiting = defer.Deferred()
        started = time.perf_counter()
        shell.type(b"x")
        yield factory.waiting
        times.append((time.perf_counter() - started) * 1000)
    shell.sendClose()
    yield factory.ended
    times.sort()
    p50, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
    print(f"keystroke round trip through the master: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
          f" ({keys} keys; goal p50 <= 5 ms: {'met' if p50 <= 5 else 'NOT met'})")


@defer.inlineCallbacks
def throughput(cluster: Cluster, path: Path, size: int):  # type: ignore[no-untyped-def]
    for pty in ("false", "true"):
        # With a terminal, stty raw: no \n to \r\n, so every byte is the file's.
        cmd = f"cat {path}" if pty == "false" else f"stty raw -echo; cat {path}"
        factory = open_shell(cluster, "w0", cmd=cmd, pty=pty)
        yield factory.opened
        started = time.perf_counter()
        yield factory.ended
        seconds = time.perf_counter() - started
        rate = factory.count / seconds / 1e6
        print(f"cat of {size} MiB through a shell {'with' if pty == 'true' else 'without'} a terminal:"
              f" {rate:.0f} MB/s ({factory.count} bytes in {seconds:.2f} s; goal >= 50 MB/s:"
              f" {'met' if rate >= 50 else 'NOT met'})")


@defer.inlineCallbacks
def many(cluster: Cluster, workers: int, shells: int):  # type: ignore[no-untyped-def]
    master = psutil.Process(cluster.master.pid)  # type: ignore[union-attr]
    before = master.memory_info().rss
    factories, opened = [], []
    for start in range(0, shells, 20):  # as people do: not 100 connections in one instant
        batch = [open_shell(cluster, f"w{i % workers}") for i in range(start, min(shells, start + 20))]
        opened += (yield defer.gatherResults([f.opened for f in batch]))
        factories += batch
    yield task.deferLater(_reactor, 2.0, lambda: None)  # their prompts, settled
    during = master.memory_info().rss
    for shell in opened:
        shell.sendClose()
    yield defer.gatherResults([f.ended for f in factories])
    grown = (during - before) / 2**20
    print(f"{shells} shells open at once on {workers} workers: master RSS {before / 2**20:.0f} MiB before,"
          f" +{grown:.1f} MiB with them open (goal <= +100 MiB: {'met' if grown <= 100 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--shells", type=int, default=100)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--size", type=int, default=100, help="MiB of the file cat reads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        big = root / "big.txt"
        with big.open("wb") as f:
            for _ in range(args.size):
                f.write(base64.encodebytes(os.urandom(3 * 2**18)))
        cluster = Cluster(root / "cluster")
        try:
            cluster.start_master("--max-shells", str(args.shells))
            for i in range(args.workers):
                cluster.start_worker(f"w{i}", "--state-dir", str(root / f"state-w{i}"), wait=False)
            cluster.wait_for_workers(*(f"w{i}" for i in range(args.workers)))

            @defer.inlineCallbacks
            def run():  # type: ignore[no-untyped-def]
                yield keystrokes(cluster, args.keys)
                yield throughput(cluster, big, args.size)
                yield many(cluster, args.workers, args.shells)

            task.react(lambda _: run())
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
