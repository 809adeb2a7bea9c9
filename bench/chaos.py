"""
A chaos run: real masters, real workers and a real PostgreSQL (a throwaway
server, as the tests start) under steady load, while, at random, a master
is SIGKILLed and started again, a worker is SIGKILLed and started again,
PostgreSQL is restarted, or a worker's connection is cut (the worker
frozen past three heartbeats, then let go).

Each pool runs, on a few random workers,
``sh -c 'echo "$PCCI_JOB" >> RUNS; echo start; sleep 0.4; echo done'``: the worker
marks each job's processes with its name and pool (C{PCCI_JOB}), so RUNS
says which job ran, and how often.  At the end it waits for every pool
accepted (answered 200) to end, checks, and prints:

- never ended: pools accepted that did not end;
- ran twice: jobs RUNS holds more than once;
- wrong end: jobs of workers that never died that did not end ``ok``
  with their whole output (a line before a master may die, one after);
- wrongly lost: ``lost`` jobs of workers that never died;

and exits 1 if any of them is not 0.

    python bench/chaos.py --seconds 600
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster, Daemon, poll
from postgres import Postgres

#: Seconds a worker's jobs wait for it before they are lost.
GRACE = 20


class Fleet:
    """The masters and workers, with who died when."""

    def __init__(self, directory: Path, db: str, masters: int, workers: int) -> None:
        self.directory = directory
        self.db = db
        self.masters = [Cluster(directory / f"m{n + 1}") for n in range(masters)]
        self.lock = threading.Lock()
        #: Worker name to the (start, end) wall-clock times it was dead.
        self.deaths: dict[str, list[tuple[float, float]]] = {f"w{n + 1}": [] for n in range(workers)}
        self.workers: dict[str, Daemon] = {}
        self.down: set[str] = set()  # masters not answering on purpose
        for n, master in enumerate(self.masters):
            if n:
                shutil.copytree(self.masters[0].state_dir, master.state_dir)
            self.start_master(n)

    def start_master(self, n: int) -> None:
        master = self.masters[n]
        deadline = time.monotonic() + 60
        while True:  # its old session may hold its name for a lease yet
            try:
                master.start_master("--db", self.db, "--name", f"m{n + 1}", "--reconnect-grace", str(GRACE),
                                    "--max-connections", "1000")
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def start_worker(self, name: str) -> None:
        first = self.masters[0]
        others = [arg for m in self.masters[1:] for arg in ("--master", f"tcp:127.0.0.1:{m.worker_port}")]
        self.workers[name] = first.start_worker(
            name, *others, "--heartbeat", "0.5", "--state-dir", str(self.directory / f"{name}-state"), wait=False
        )

    def urls(self) -> list[int]:
        return [m.api_port for n, m in enumerate(self.masters) if f"m{n + 1}" not in self.down]

    def stop(self) -> None:
        for daemon in self.workers.values():
            daemon.stop()
        for master in self.masters:
            master.stop()


def call(port: int, token: str, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        connection.request(method, path, None if body is None else json.dumps(body), headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def load(
    fleet: Fleet, token: str, runs: Path, stop: threading.Event, accepted: list[dict[str, Any]], seed: int
) -> None:
    """One client: a pool of 1 to 3 random workers on a random master, about ten a second."""
    chance = random.Random(seed)
    names = sorted(fleet.deaths)
    cmd = f"sh -c 'echo \"$PCCI_JOB\" >> {runs}; echo start; sleep 0.4; echo done'"
    while not stop.is_set():
        ports = fleet.urls()
        if not ports:
            time.sleep(0.1)
            continue
        port = chance.choice(ports)
        workers = chance.sample(names, chance.randint(1, 3))
        at = time.time()
        try:
            status, answer = call(port, token, "POST", "/job", {"cmd": cmd, "workers": workers}, timeout=15)
        except OSError:
            continue
        if status == 200:
            with fleet.lock:
                accepted.append({"id": answer["pool_id"], "workers": workers, "at": at})
        time.sleep(chance.uniform(0.05, 0.15))


def chaos(
    fleet: Fleet,
    server: Postgres,
    stop: threading.Event,
    seed: int,
    counts: Counter[str],
    actions: list[tuple[float, str]],
) -> None:
    chance = random.Random(seed)
    while not stop.wait(chance.uniform(2.0, 5.0)):
        action = chance.choice(["master", "worker", "postgres", "cut"])
        counts[action] += 1
        if action == "master":
            n = chance.randrange(len(fleet.masters))
            master = fleet.masters[n]
            assert master.master is not None
            fleet.down.add(f"m{n + 1}")
            actions.append((time.time(), f"master m{n + 1}"))
            master.master.signal(signal.SIGKILL)
            master.master.process.wait()
            time.sleep(chance.uniform(0.5, 2.0))
            fleet.start_master(n)
            fleet.down.discard(f"m{n + 1}")
        elif action == "worker":
            name = chance.choice(sorted(fleet.workers))
            began = time.time()
            actions.append((began, f"worker {name}"))
            fleet.workers[name].signal(signal.SIGKILL)
            fleet.workers[name].process.wait()
            time.sleep(chance.uniform(0.2, 2.0))
            fleet.start_worker(name)
            fleet.deaths[name].append((began, time.time() + 3))
        elif action == "postgres":
            actions.append((time.time(), "postgres"))
            server.stop()
            time.sleep(chance.uniform(0.5, 3.0))
            server.start()
        else:  # cut: silent past three heartbeats, the master drops it; its jobs run on
            name = chance.choice(sorted(fleet.workers))
            actions.append((time.time(), f"cut {name}"))
            fleet.workers[name].signal(signal.SIGSTOP)
            time.sleep(chance.uniform(2.0, 4.0))
            fleet.workers[name].signal(signal.SIGCONT)


def nearest_action(actions: list[tuple[float, str]], at: float) -> str:
    """The action nearest in time to C{at}, and how far from it."""
    near = min(actions, key=lambda a: abs(a[0] - at), default=None)
    return "none" if near is None else f"{near[1]} {at - near[0]:+.1f} s"


def died_during(fleet: Fleet, worker: str, start: float, end: float) -> bool:
    return any(a <= end and start <= b for a, b in fleet.deaths[worker])


def finish(fleet: Fleet, token: str, accepted: list[dict[str, Any]], timeout: float) -> dict[str, dict[str, Any]]:
    """Each accepted pool as it ended (or as it stands at the deadline)."""
    ended: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    for pool in accepted:
        while True:
            port = random.choice(fleet.urls())
            try:
                status, body = call(port, token, "GET", f"/pools/{pool['id']}?wait=10", timeout=20)
            except OSError:
                status, body = 0, None
            if status == 200 and body["status"] is not None:
                ended[pool["id"]] = body
                break
            if time.monotonic() > deadline:
                if status == 200:
                    ended[pool["id"]] = body
                break
    return ended


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--masters", type=int, default=2)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the daemons' logs and state, and say where")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    directory = Path(tempfile.mkdtemp(prefix="pcci-chaos-"))
    server = Postgres()
    fleet = None
    try:
        fleet = Fleet(directory, server.url, args.masters, args.workers)
        token = fleet.masters[0].token or ""
        for name in fleet.deaths:
            fleet.start_worker(name)
        poll(lambda: len(fleet.masters[0].workers()) == args.workers, timeout=60, what="every worker")
        time.sleep(3)  # each worker's memory of jobs older than the first pool
        runs = directory / "runs"
        runs.touch()
        accepted: list[dict[str, Any]] = []
        counts: Counter[str] = Counter()
        actions: list[tuple[float, str]] = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=load, args=(fleet, token, runs, stop, accepted, seed + n))
            for n in range(args.clients)
        ]
        threads.append(threading.Thread(target=chaos, args=(fleet, server, stop, seed, counts, actions)))
        started = time.monotonic()
        for thread in threads:
            thread.start()
        stop.wait(args.seconds)
        stop.set()
        for thread in threads:
            thread.join()
        load_ended = time.monotonic()
        ended = finish(fleet, token, accepted, GRACE * 3)
        ran = Counter(line.strip() for line in runs.read_text().splitlines() if line.strip())
        never = [p["id"] for p in accepted if p["id"] not in ended or ended[p["id"]]["status"] is None]
        twice = [job for job, n in ran.items() if n > 1]
        wrong, wrongly_lost, lost = [], [], 0
        for pool in accepted:
            body = ended.get(pool["id"])
            if body is None or body["status"] is None:
                continue
            for job in body["jobs"]:
                end = datetime.fromisoformat(job["ended_at"]).timestamp() if job["ended_at"] else time.time()
                died = died_during(fleet, job["worker_id"], pool["at"] - 1, end + 1)
                if job["state"] == "lost":
                    lost += 1
                    if not died:
                        wrongly_lost.append((pool["id"], job["worker_id"], job["result"]))
                elif not died and (job["state"] != "ok" or job["result"] != "start\ndone\n"):
                    wrong.append(
                        (pool["id"], job["worker_id"], job["state"], job["result"], nearest_action(actions, pool["at"]))
                    )
        print(
            f"chaos run: {load_ended - started:.0f} s, seed {seed}, {args.masters} masters,"
            f" {args.workers} workers, {args.clients} clients"
        )
        print("  actions: " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())))
        jobs = sum(len(p["workers"]) for p in accepted)
        print(f"  pools accepted: {len(accepted)} ({jobs} jobs), lost where a worker died: {lost}")
        print(f"  never ended: {len(never)}")
        print(f"  ran twice: {len(twice)}")
        print(f"  wrong end: {len(wrong)}")
        print(f"  wrongly lost: {len(wrongly_lost)}")
        for what, items in (
            ("never ended", never),
            ("ran twice", twice),
            ("wrong end", wrong),
            ("wrongly lost", wrongly_lost),
        ):
            for item in items[:5]:
                print(f"    {what}: {item}")
        return 1 if never or twice or wrong or wrongly_lost else 0
    finally:
        if fleet is not None:
            fleet.stop()
        server.destroy()
        if args.keep:
            print(f"  logs and state kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
