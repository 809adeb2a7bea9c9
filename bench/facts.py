"""
Facts and queries at fleet scale, against the goals of issue 34:

- the facts of --workers simulated workers (four kinds of machine, each
  with its rack): the master's RSS with them joined, against a master whose
  workers tell no facts; goal at most +100 MiB;
- a query over them: `GET /facts?query=…&fields=name` and `POST
  /job?dry_run=true` with a query, from the request to the answer, and the
  query alone in this process over as many workers' documents, walking
  them and from the index the master answers from; goal at most 50 ms.

    python bench/facts.py --workers 10000
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import treq
from twisted.internet import task

sys.path.insert(0, str(Path(__file__).resolve().parent))
from simulated import Cluster, connect, with_master
from swarm import InstantJobs, facts_of

from pcci.master.cluster import queries
from pcci.master.cluster.factindex import FactIndex

QUERY = "os.family=debian and cpus>=8 and not gpu.count=0 or rack in (3, 4, 5)"


async def settle(reactor: Any, cluster: Cluster, count: int, facts: bool) -> None:
    """Until the master holds every worker's facts (or, without, a few seconds for the joins to settle)."""
    headers = {"Authorization": f"Bearer {cluster.token}"}
    for _ in range(120):
        await task.deferLater(reactor, 0.5, lambda: None)
        if not facts:
            return
        response = await treq.get(f"http://127.0.0.1:{cluster.api_port}/facts?query=cpus>0&fields=cpus",
                                  headers=headers)
        if len(await response.json()) == count:
            return
    raise RuntimeError("the master never held every worker's facts")


async def timed(call: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def measure(reactor: Any, cluster: Cluster, args: argparse.Namespace, facts: bool, rss: dict[str, int]) -> None:
    assert cluster.master is not None
    master = psutil.Process(cluster.master.pid)
    names = [f"sim-{i:05d}" for i in range(args.workers)]
    await connect(reactor, cluster, names, heartbeat=60, jobs=InstantJobs, facts=facts)
    await settle(reactor, cluster, args.workers, facts)
    rss[str(facts)] = master.memory_info().rss
    if not facts:
        return
    headers = {"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"}
    base = f"http://127.0.0.1:{cluster.api_port}"

    async def listed() -> None:
        response = await treq.get(f"{base}/facts", params={"query": QUERY, "fields": "name"}, headers=headers)
        assert response.code == 200
        await response.content()

    async def dry_run() -> None:
        body = json.dumps({"cmd": "true", "query": QUERY}).encode()
        response = await treq.post(f"{base}/job?dry_run=true", body, headers=headers)
        assert response.code == 200, await response.text()
        await response.content()

    print(f"a query over {args.workers} workers ({QUERY!r}):")
    print(f"  GET /facts?query=…&fields=name, request to answer: median {await timed(listed, args.runs):.0f} ms")
    print(f"  POST /job?dry_run=true with it, request to answer: median {await timed(dry_run, args.runs):.0f} ms")
    documents = {name: {**facts_of(i), "labels": {}, "name": name} for i, name in enumerate(names)}
    index = FactIndex(lambda: documents, documents.get)
    started = time.perf_counter()
    index.chosen(queries.parse(QUERY), documents)
    first = (time.perf_counter() - started) * 1000
    walked, indexed, churned = [], [], []
    for run in range(args.runs):
        started = time.perf_counter()
        test = queries.compiled(queries.parse(QUERY))
        chosen = [name for name, document in documents.items() if test(document)]
        walked.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        assert index.chosen(queries.parse(QUERY), documents) == chosen
        indexed.append((time.perf_counter() - started) * 1000)
        for name in names[run * 100:(run + 1) * 100]:  # a hundred workers tell new facts
            documents[name] = {**documents[name], "kernel": f"6.1.{run}"}
            index.changed(name)
        started = time.perf_counter()
        index.chosen(queries.parse(QUERY), documents)
        churned.append((time.perf_counter() - started) * 1000)
    median = statistics.median(indexed)
    print(f"  the query alone over {len(documents)} workers ({len(chosen)} chosen), parsed and run:")
    print(f"    walking every document: median {statistics.median(walked):.1f} ms")
    print(f"    from the master's index: first (its columns built) {first:.1f} ms, then median {median:.2f} ms,"
          f" after 100 workers' facts changed median {statistics.median(churned):.2f} ms"
          f" (goal <= 50 ms: {'met' if max(median, statistics.median(churned)) <= 50 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--phase", choices=["with", "without"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # one master, in a process of its own (a reactor runs once)
        rss: dict[str, int] = {}
        facts = args.phase == "with"
        with_master(lambda reactor, cluster: measure(reactor, cluster, args, facts, rss),
                    "--max-connections", str(args.workers + 10), "--max-workers", str(args.workers))
        print(f"RSS {rss[str(facts)]}", flush=True)
        return
    sizes: dict[str, int] = {}
    for phase in ("without", "with"):
        done = subprocess.run([sys.executable, __file__, "--workers", str(args.workers), "--runs", str(args.runs),
                               "--phase", phase], capture_output=True, text=True, check=True)
        for line in done.stdout.splitlines():
            if line.startswith("RSS "):
                sizes[phase] = int(line.split()[1])
            elif "joined" not in line:
                print(line)
    grown = (sizes["with"] - sizes["without"]) / 2**20
    print(f"master RSS with {args.workers} workers: {sizes['without'] / 2**20:.0f} MiB without facts,"
          f" {sizes['with'] / 2**20:.0f} MiB with them: +{grown:.0f} MiB (goal <= +100 MiB:"
          f" {'met' if grown <= 100 else 'NOT met'})")


if __name__ == "__main__":
    main()
