"""
A worker's facts (L{pcci.worker.facts}): read from fake /etc, /proc and
/sys trees and a facts.d; sent to a master that asks, when they change and
when it asks again.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_worker import connect, frames
from twisted.internet.defer import succeed

from pcci.wire import PROTOCOL_VERSION, encode
from pcci.worker import facts
from pcci.worker.facts import FACTS_EVERY, MAX_FACTS, bounded, custom, gather, gpus, os_release, virtualization


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_os_comes_from_os_release(tmp_path: Path) -> None:
    root = tree(tmp_path, {"etc/os-release": 'ID=rocky\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\n'
                                             'PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"\n# a comment\n'})
    assert os_release(root) == {
        "id": "rocky", "family": "rhel", "version": "9.3", "name": "Rocky Linux 9.3 (Blue Onyx)",
    }
    root = tree(tmp_path / "b", {"usr/lib/os-release": "ID=debian\nVERSION_ID=12\n"})
    assert os_release(root)["family"] == "debian"


@pytest.mark.parametrize(("files", "expected"), [
    ({}, "none"),
    ({".dockerenv": ""}, "docker"),
    ({"run/.containerenv": ""}, "podman"),
    ({"proc/1/cgroup": "0::/kubepods/besteffort/pod1\n"}, "kubernetes"),
    ({"sys/class/dmi/id/sys_vendor": "QEMU\n", "sys/class/dmi/id/product_name": "Standard PC\n"}, "kvm"),
    ({"sys/class/dmi/id/sys_vendor": "VMware, Inc.\n"}, "vmware"),
    ({"sys/class/dmi/id/sys_vendor": "Dell Inc.\n", "sys/class/dmi/id/product_name": "PowerEdge R740\n"}, "none"),
])
def test_virtualisation_and_containers_are_told_apart(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    assert virtualization(tree(tmp_path, files)) == expected


def test_graphics_cards_come_from_the_kernel_s_drm_devices(tmp_path: Path) -> None:
    root = tree(tmp_path, {
        "sys/class/drm/card0/device/vendor": "0x10de\n",
        "sys/class/drm/card1/device/vendor": "0x8086\n",
        "sys/class/drm/card0-HDMI-A-1/status": "connected\n",
    })
    assert gpus(root) == {"count": 2, "vendor": "nvidia", "models": ["nvidia", "intel"]}
    assert gpus(tmp_path / "none")["count"] == 0


def test_custom_facts_are_json_key_values_or_text_and_their_faults_are_errors(tmp_path: Path) -> None:
    directory = tmp_path / "facts.d"
    directory.mkdir()
    (directory / "location.json").write_text('{"room": "b12", "rack": 3}')
    (directory / "owner").write_text("team=infra\noncall=alice\n")
    (directory / "motd").write_text("  hello  \n")
    script = directory / "disk.sh"
    script.write_text("#!/bin/sh\necho '{\"ssd\": true}'\n")
    failing = directory / "broken.sh"
    failing.write_text("#!/bin/sh\necho oops >&2; exit 2\n")
    slow = directory / "slow"
    slow.write_text("#!/bin/sh\nsleep 31.5 &\nsleep 32.5\n")
    for program in (script, failing, slow):
        program.chmod(0o755)
    (directory / ".hidden").write_text("x")
    errors: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(facts, "PROGRAM_TIMEOUT", 0.5)
        found = custom(directory, errors)
    assert found == {"location": {"room": "b12", "rack": 3}, "owner": {"team": "infra", "oncall": "alice"},
                     "motd": "hello", "disk": {"ssd": True}}
    assert errors == {"facts.d/broken.sh": "exited 2: oops", "facts.d/slow": "still running after 0.5 s: stopped"}
    left = subprocess.run(["pgrep", "-f", "sleep 3[12].5"], capture_output=True, text=True).stdout
    assert left == ""  # it, and what it started, killed


def test_a_custom_fact_does_not_hide_one_of_pcci_s(tmp_path: Path) -> None:
    tree(tmp_path, {"facts.d/cpus": "9999"})
    found = gather(tmp_path)
    assert found["cpus"] == os.cpu_count()
    assert found["errors"]["cpus"] == "facts.d: cpus is a fact of pcci's own, kept"
    assert {"os", "kernel", "arch", "memory", "filesystems", "gpu", "virtualization", "addresses", "boot_time",
            "python", "pcci"} <= set(found)
    json.dumps(found)  # all of it goes in a frame


def test_facts_too_large_keep_pcci_s_own_and_say_why() -> None:
    huge = {"cpus": 4, "blob": "x" * MAX_FACTS}
    assert bounded(huge) == {"cpus": 4, "errors": {"facts.d": f"its facts are over {MAX_FACTS} bytes: left out"}}
    assert bounded({"cpus": 4}) == {"cpus": 4}


def test_facts_go_to_a_master_that_asks_when_they_change_and_when_it_asks_again() -> None:
    told = [{"cpus": 4}]
    factory, protocol, transport = connect(welcome=False)
    factory.gather_facts = lambda: succeed(told[0])
    assert json.loads(transport.value().split(b"EOM")[0])["facts"] is True  # the hello offers them
    frames(transport)
    protocol.dataReceived(encode({"code": "welcome", "version": PROTOCOL_VERSION, "facts": True}))
    assert [f for f in frames(transport) if f["code"] == "facts"] == [{"code": "facts", "facts": {"cpus": 4}}]
    factory.reactor.advance(FACTS_EVERY)
    assert [f for f in frames(transport) if f["code"] == "facts"] == []  # unchanged: not sent again
    told[0] = {"cpus": 8}
    factory.reactor.advance(FACTS_EVERY)
    assert [f["facts"] for f in frames(transport) if f["code"] == "facts"] == [{"cpus": 8}]
    protocol.dataReceived(encode({"code": "facts_refresh"}))
    assert [f["facts"] for f in frames(transport) if f["code"] == "facts"] == [{"cpus": 8}]


def test_a_master_that_does_not_ask_gets_no_facts() -> None:
    factory, protocol, transport = connect()
    factory.gather_facts = lambda: pytest.fail("facts gathered for a master that did not ask")
    factory.reactor.advance(FACTS_EVERY)
    assert [f for f in frames(transport) if f["code"] == "facts"] == []
