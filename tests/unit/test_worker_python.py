"""The worker, and every module of pcci it imports, runs on Python 3.9; the master says it needs 3.11."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pcci

ROOT = Path(pcci.__file__).resolve().parent.parent


def worker_modules() -> list[str]:
    """The files of pcci's modules a worker imports, found by importing it afresh."""
    found = subprocess.run(
        [sys.executable, "-c", "import sys, pcci.worker.tap; print(*(m.__file__ for n, m in"
         " sys.modules.items() if n.split('.')[0] == 'pcci'))"],
        check=True, capture_output=True, text=True,
    )
    return found.stdout.split() + [str(ROOT / "twisted" / "plugins" / "pcci_worker.py")]


def test_the_worker_needs_nothing_past_python_3_9() -> None:
    files = worker_modules()
    assert any(f.endswith("worker/jobs.py") for f in files) and len(files) > 10
    checked = subprocess.run(
        [str(Path(sys.executable).with_name("vermin")), "--no-tips", "--violations", "-t=3.9-", *files],
        capture_output=True, text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_master_on_an_older_python_says_what_it_needs_in_one_line() -> None:
    older = "import sys; sys.version_info = (3, 9, 18, 'final', 0); sys.version = '3.9.18 (old)'; import pcci.master"
    done = subprocess.run([sys.executable, "-c", older], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == (
        "pcci-master needs Python 3.11 or newer, and this is 3.9.18: run the master on a newer Python"
        " (a worker runs on 3.9 or newer)\n"
    )
    assert subprocess.run([sys.executable, "-c", "import pcci.master"]).returncode == 0
