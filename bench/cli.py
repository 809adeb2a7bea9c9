"""
The pcci command's own cost: `pcci run -w w1 -- true` end to end (a new
process each time: start-up, POST, the event stream, the summary), against
the two `curl` calls a script would make (POST /job, then GET ?wait), in
the same run, interleaved.  Prints the medians of --runs of each.

Run it from the repository with pcci installed:  python bench/cli.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster import Cluster

PCCI = str(Path(sys.executable).parent / "pcci")


def timed(command: list[str], env: dict[str, str]) -> tuple[float, bytes]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, check=True)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    curl = shutil.which("curl")
    if curl is None:
        sys.exit("bench/cli.py compares with curl: install it first")
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory))
        try:
            cluster.start_master()
            cluster.start_worker("w1")
            url = f"http://127.0.0.1:{cluster.api_port}"
            env = {**os.environ, "PCCI_URL": url, "PCCI_TOKEN": cluster.token}
            auth = ["-H", f"Authorization: Bearer {cluster.token}"]
            post = [curl, "-sf", "-XPOST", f"{url}/job", *auth, "-H", "Content-Type: application/json",
                    "-d", '{"cmd": "true", "workers": ["w1"]}']
            times: dict[str, list[float]] = {"pcci": [], "curl": []}
            for _ in range(args.runs + 2):  # the first two warm the caches up
                elapsed, _ = timed([PCCI, "run", "-w", "w1", "--", "true"], env)
                times["pcci"].append(elapsed)
                first, answer = timed(post, env)
                pool_id = json.loads(answer)["pool_id"]
                second, _ = timed([curl, "-sf", *auth, f"{url}/pools/{pool_id}?wait=60"], env)
                times["curl"].append(first + second)
            pcci, curls = (statistics.median(times[k][2:]) for k in ("pcci", "curl"))
            print(f"`pcci run -w w1 -- true`, median of {args.runs}: {pcci * 1000:.0f} ms")
            print(f"curl POST /job + curl GET ?wait, median of {args.runs}: {curls * 1000:.0f} ms")
            print(f"ratio: {pcci / curls:.1f}x")
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
