"""
Pushing files with `pcci cp`, against local copies, in one run on this
machine: a master and --workers workers (each in a directory of its own,
which the push reaches as /proc/self/cwd/out/), and print

- a --size MiB file pushed to every worker, against that many local `cp`;
- a tree of --files small files pushed to every worker, against that many
  `tar | tar` of it; then the same push again (everything unchanged);
- the master's peak RSS during each push, over its RSS before.

    python bench/files.py --workers 10 --size 256 --files 2000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster, Daemon

PCCI = str(Path(sys.executable).parent / "pcci")


class PeakRSS:
    """The highest RSS of a process while in the block, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.before = self.process.memory_info().rss
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(command: list[str] | str, **kw: object) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - started


def push(cluster: Cluster, *args: str) -> float:
    env = {**os.environ, "PCCI_URL": f"http://127.0.0.1:{cluster.api_port}", "PCCI_TOKEN": cluster.token or ""}
    return timed([PCCI, "cp", "-w", "w*", "--mkdir", *args, "/proc/self/cwd/out/"], env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--size", type=int, default=256, help="MiB of the big file")
    parser.add_argument("--files", type=int, default=2000, help="small files in the tree")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        big = root / "big.bin"
        with big.open("wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(2**20))
        tree = root / "tree"
        for i in range(args.files):
            path = tree / f"d{i % 40:02d}" / f"f{i:05d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"file {i}\n" * 200)
        local = root / "local"
        cps = sum(timed(["cp", str(big), str(local / f"c{i}.bin")]) for i in range(args.workers)
                  if (local.mkdir(exist_ok=True) or True))
        tars = 0.0
        for i in range(args.workers):
            into = local / f"t{i}"
            into.mkdir()
            tars += timed(f"tar -cf - -C {tree.parent} tree | tar -xf - -C {into}", shell=True)
        cluster = Cluster(root / "cluster")
        try:
            cluster.start_master("--max-connections", "100")
            for i in range(args.workers):
                home = root / f"w{i}"
                home.mkdir()
                cluster.daemons.append(Daemon(
                    home, f"worker-w{i}", "pcci-worker", "--name", f"w{i}",
                    "--master", f"tcp:127.0.0.1:{cluster.worker_port}",
                    "--secret-file", str(cluster.secret_file), "--state-dir", str(home / "state"),
                ))
            cluster.wait_for_workers(*(f"w{i}" for i in range(args.workers)))
            assert cluster.master is not None
            with PeakRSS(cluster.master.pid) as rss:
                pushed = push(cluster, str(big))
            for i in range(args.workers):
                assert (root / f"w{i}" / "out" / "big.bin").stat().st_size == args.size * 2**20
            print(f"{args.size} MiB to {args.workers} workers: {pushed:.2f} s;"
                  f" {args.workers} local cp: {cps:.2f} s; ratio {pushed / cps:.1f}"
                  f" (master +{(rss.peak - rss.before) / 2**20:.0f} MiB at most)")
            with PeakRSS(cluster.master.pid) as rss:
                pushed = push(cluster, "-r", str(tree))
            print(f"{args.files} files to {args.workers} workers: {pushed:.2f} s;"
                  f" {args.workers} tar | tar: {tars:.2f} s; ratio {pushed / tars:.1f}"
                  f" (master +{(rss.peak - rss.before) / 2**20:.0f} MiB at most)")
            again = push(cluster, "-r", str(tree))
            print(f"the same {args.files} files again (all unchanged): {again:.2f} s")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
