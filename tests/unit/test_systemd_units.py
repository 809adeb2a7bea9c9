"""
The systemd units pcci ships (C{examples/systemd/}, and the one
C{install.sh} writes), as systemd itself reads them: C{systemd-analyze
verify} knows every key and parses every value, and the statuses a worker
exits with when trying again cannot mend it stop systemd's restarts.
No systemd runs here: what the units do once started is not tried.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from cluster import REPOSITORY

from pcci.identity import EXIT_STATUSES

Verify = Callable[[str, str], str]

INSTALL_SH = REPOSITORY / "pcci" / "master" / "install" / "install.sh"
EXAMPLES = sorted((REPOSITORY / "examples" / "systemd").glob("*.service"))


@pytest.fixture
def verify(tmp_path: Path) -> Verify:
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs systemd-analyze (Debian's systemd)")
        pytest.skip("needs systemd-analyze (Debian's systemd)")

    def verify(name: str, text: str) -> str:
        """What systemd-analyze says of C{text}, its programs replaced by one that exists."""
        unit = tmp_path / name
        unit.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", text, flags=re.MULTILINE))
        done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stderr

    return verify


def written_by_install_sh() -> str:
    """The unit C{install.sh} writes for worker C{node1} in C{/opt/pcci}: its here-document, expanded by sh."""
    script = INSTALL_SH.read_text()
    heredoc = re.search(r'cat >"\$UNIT" <<EOF\n(.*?\nEOF\n)', script, re.DOTALL)
    assert heredoc, "install.sh writes its unit from a here-document"
    crashes = re.search(r"^CRASHES_MAX=(\d+)", script, re.MULTILINE)
    assert crashes
    expand = f"name=node1 prefix=/opt/pcci CRASHES_MAX={crashes[1]}\ncat <<EOF\n{heredoc[1]}"
    return subprocess.run(["sh", "-c", expand], capture_output=True, text=True, check=True, timeout=10).stdout


def stops_restarting_on(text: str) -> set[int]:
    found = re.search(r"^RestartPreventExitStatus=(.*)$", text, re.MULTILINE)
    assert found, "the unit stops restarting on refusals"
    return {int(status) for status in found[1].split()}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_the_example_units_are_units_systemd_reads_whole(example: Path, verify: Verify) -> None:
    assert verify(example.name, example.read_text()) == ""


def test_the_unit_install_sh_writes_is_read_whole_and_stops_on_every_refusal(verify: Verify) -> None:
    unit = written_by_install_sh()
    assert "ExecStart=/opt/pcci/bin/pcci-worker\n" in unit and "Description=pcci worker node1\n" in unit
    assert verify("pcci-worker.service", unit) == ""
    assert stops_restarting_on(unit) == set(EXIT_STATUSES.values())
    worker_example = (REPOSITORY / "examples" / "systemd" / "pcci-worker.service").read_text()
    assert stops_restarting_on(worker_example) == set(EXIT_STATUSES.values())


def test_a_unit_systemd_does_not_read_whole_is_told(verify: Verify) -> None:
    said = verify("typo.service", "[Service]\nExecStart=/bin/true\nRestartPreventExitStatus=10 x\nKillModee=none\n")
    assert "Failed to parse value" in said and "Unknown key 'KillModee'" in said
