"""The worker, and every module of pcci it imports, runs on Python 3.9."""

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
