"""A short chaos run (bench/chaos.py): masters, workers and PostgreSQL killed at random under load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from postgres import binaries

pytestmark = [pytest.mark.e2e, pytest.mark.long(40)]

CHAOS = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"


def test_a_short_chaos_run_keeps_every_promise() -> None:
    if binaries() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("needs PostgreSQL (apt-get install postgresql)")
    done = subprocess.run(
        [sys.executable, str(CHAOS), "--seconds", "20"], capture_output=True, text=True, timeout=400
    )
    report = done.stdout + done.stderr[-3000:]
    assert done.returncode == 0, report
    for line in ("never ended: 0", "ran twice: 0", "wrong end: 0", "wrongly lost: 0"):
        assert line in report, report
    assert "pools accepted: 0 " not in report
