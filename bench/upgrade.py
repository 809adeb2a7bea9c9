"""
Workers upgraded from the master: N real workers installed by the install
line at an older version (this tree with its version lowered), a job
running on each, then POST /workers/upgrade with --batch; the time until
every worker is back with the master's version, each batch's, and whether
every job ended ok with its whole output.

    python bench/upgrade.py --workers 20 --batch 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cluster import Cluster, Daemon, older_tree, poll
from install import install_master, wheelhouse_in

import pcci

OLD = "1.99.0"
TICKS = 40  # the job: a line every half second
#: The jobs wait for their workers across the master's restart.
GRACE = ("--reconnect-grace", "120")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--batch", default="5")
    parser.add_argument("--wheelhouse", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wheelhouse = wheelhouse_in(root, args.wheelhouse)
        c = Cluster(root / "cluster", worker_auth="identity")
        names = [f"up{i:02d}" for i in range(args.workers)]
        try:
            install_master(c, wheelhouse, *GRACE, env={"PYTHONPATH": str(older_tree(root / "older", OLD))})
            code, made = c.request("POST", "/join-tokens", {"name": "up*", "uses": args.workers})
            assert code == 201, made

            def install(name: str) -> None:
                line = made["command"][:-1] + f" --name {name} --prefix {root / name} --no-service)"
                done = subprocess.run(["sh", "-c", line], capture_output=True, text=True)
                assert done.returncode == 0, done.stderr

            began = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(install, names))
            print(f"{args.workers} workers installed at {OLD} in {time.perf_counter() - began:.0f} s")
            for name in names:
                c.daemons.append(Daemon(c.directory, name, "", program=str(root / name / "bin" / "pcci-worker")))
            c.wait_for_workers(*names)
            c.master.stop()
            install_master(c, wheelhouse, *GRACE)
            c.wait_for_workers(*names)
            pool_id = c.submit(f"sh -c 'for i in $(seq 1 {TICKS}); do echo tick $i; sleep 0.5; done'", names)
            began = time.perf_counter()
            code, rollout = c.request("POST", "/workers/upgrade", {"batch": args.batch})
            assert code == 202, rollout
            seen: dict[str, str] = {}
            backs: list[float] = []

            def ended() -> bool:
                nonlocal rollout
                rollout = c.request("GET", f"/workers/upgrade/{rollout['id']}")[1]
                for name, worker in rollout["workers"].items():
                    if seen.get(name) != worker["state"]:
                        seen[name] = worker["state"]
                        if worker["state"] == "done":
                            backs.append(time.perf_counter() - began)
                return bool(rollout["state"] == "ended")

            poll(ended, timeout=1800, what="the rollout's end")
            total = time.perf_counter() - began
            print(f"upgrade of {args.workers} workers, batch {args.batch}: {rollout['counts']} in {total:.1f} s")
            print("back (s after the order): " + ", ".join(f"{t:.1f}" for t in sorted(backs)))
            pool = c.wait_pool(pool_id, timeout=600)
            whole = "".join(f"tick {i}\n" for i in range(1, TICKS + 1))
            ok = sum(1 for job in pool["jobs"] if job["state"] == "ok" and job["result"] == whole)
            print(f"jobs running during the upgrade: {ok}/{len(pool['jobs'])} ended ok with their whole output")
            versions = {w["id"]: w["pcci_version"] for w in c.request("GET", "/workers")[1]}
            print(f"workers at {pcci.__version__}: {sum(v == pcci.__version__ for v in versions.values())}")
        finally:
            c.stop()


if __name__ == "__main__":
    main()
