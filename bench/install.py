"""
From the one line to a worker online: a master serving its wheel and a
wheelhouse of the dependencies (made here with pip download, unless
--wheelhouse says where one is), a join token, the line run with a
prefix of its own (--no-service), the installed worker started; the time
of each step, and of the whole.

    python bench/install.py [--wheelhouse DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cluster import Cluster, Daemon, poll

from pcci.master.install.wheel import build


def wheelhouse_in(root: Path, given: Path | None) -> Path:
    """C{given}, or a wheelhouse made in C{root}."""
    if given is not None:
        return given
    (root / "wheelhouse").mkdir()
    return make_wheelhouse(root / "wheelhouse")


def install_master(c: Cluster, wheelhouse: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """A master serving installs on loopback, with C{wheelhouse}."""
    c.start_master("--wheelhouse", str(wheelhouse), "--public-url", f"http://127.0.0.1:{c.api_port}",
                   "--join-address", f"127.0.0.1:{c.worker_port}", *args, env=env)


def make_wheelhouse(where: Path) -> Path:
    wheel = build()
    (where / wheel.name).write_bytes(wheel.data)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(where), str(where / wheel.name)],
                   check=True, stderr=subprocess.DEVNULL)
    (where / wheel.name).unlink()
    return where


def one_run(c: Cluster, prefix: Path, name: str) -> tuple[float, float]:
    code, made = c.request("POST", "/join-tokens", {"name": name})
    assert code == 201, made
    line = made["command"][:-1] + f" --prefix {prefix} --no-service)"
    began = time.perf_counter()
    done = subprocess.run(["sh", "-c", line], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    installed = time.perf_counter() - began
    worker = Daemon(c.directory, f"installed-{name}", "", program=str(prefix / "bin" / "pcci-worker"))
    c.daemons.append(worker)
    poll(lambda: any(w["id"] == name for w in c.request("GET", "/workers")[1]), what=f"{name} online")
    return installed, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheelhouse", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        wheelhouse = wheelhouse_in(root, args.wheelhouse)
        c = Cluster(root / "cluster", worker_auth="identity")
        try:
            install_master(c, wheelhouse)
            for run in range(args.runs):
                installed, online = one_run(c, root / f"opt-{run}", f"node{run}")
                print(f"run {run + 1}: installed and joined in {installed:.1f} s, online {online:.1f} s after the line")
        finally:
            c.stop()


if __name__ == "__main__":
    main()
