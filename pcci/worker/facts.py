"""
What a worker tells of its machine: its facts, for queries over the fleet
(C{pcci run -q 'os.id=debian and cpus>=4'}, C{pcci facts}).

Read from C{/etc/os-release}, C{/proc}, C{/sys} and psutil, under a root
that tests point at a fake tree; and from C{<state-dir>/facts.d/}: each
executable there prints JSON or C{KEY=VALUE} lines (run with a timeout),
each other file is read the same way, and the fact is named after the file
(C{facts.d/rack.sh} gives C{rack}).  What cannot be read is an entry of
C{errors}, never a crash.  It blocks (files, a child process): the worker
runs it in a thread.

Python 3.9: a worker imports this.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import psutil
from twisted.internet.task import LoopingCall

from pcci import __version__
from pcci.wire import FramedJSONProtocol

#: Seconds a custom fact's program, or nvidia-smi, may take.
PROGRAM_TIMEOUT = 5.0

#: Bytes of a custom fact read, at most.
MAX_CUSTOM = 16 * 1024

#: File systems that are not this machine's disks (and may hang a look at them).
REMOTE_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "sshfs", "fuse.sshfs", "glusterfs", "ceph", "9p")

#: PCI vendors of graphics cards, as the kernel's DRM devices name them.
GPU_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}

Facts = dict[str, Any]


def gather(state_dir: Path | None, root: Path = Path("/")) -> Facts:
    """Every fact of this machine, and the errors met on the way."""
    facts: Facts = {}
    errors: dict[str, str] = {}
    for name, reader in (
        ("os", lambda: os_release(root)),
        ("kernel", platform.release),
        ("arch", platform.machine),
        ("cpus", lambda: os.cpu_count() or 0),
        ("memory", lambda: psutil.virtual_memory().total),
        ("filesystems", filesystems),
        ("gpu", lambda: gpus(root)),
        ("virtualization", lambda: virtualization(root)),
        ("addresses", addresses),
        ("boot_time", lambda: int(psutil.boot_time())),
        ("hostname", socket.gethostname),
        ("python", platform.python_version),
        ("pcci", lambda: __version__),
    ):
        try:
            facts[name] = reader()
        except Exception as e:  # a fact that cannot be read is an error to show, not a crash
            errors[name] = f"{type(e).__name__}: {e}"
    if state_dir is not None:
        for name, value in custom(state_dir / "facts.d", errors).items():
            if name in facts:
                errors[name] = f"facts.d: {name} is a fact of pcci's own, kept"
            else:
                facts[name] = value
    if errors:
        facts["errors"] = errors
    return facts


def key_values(text: str) -> dict[str, str]:
    """An os-release (or a custom fact's C{KEY=VALUE} lines), its quotes taken off."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            found[key.strip()] = value.strip().strip("\"'")
    return found


def os_release(root: Path) -> dict[str, str]:
    for place in ("etc/os-release", "usr/lib/os-release"):
        path = root / place
        if path.exists():
            release = key_values(path.read_text(encoding="utf-8", errors="replace"))
            break
    else:
        return {"family": platform.system().lower(), "id": platform.system().lower(), "version": ""}
    distro = release.get("ID", "linux")
    return {
        "id": distro,
        "family": (release.get("ID_LIKE") or distro).split()[0],
        "version": release.get("VERSION_ID", ""),
        "name": release.get("PRETTY_NAME", distro),
    }


def filesystems() -> list[dict[str, Any]]:
    found = []
    for part in psutil.disk_partitions(all=False):
        if part.fstype in REMOTE_FILESYSTEMS:
            continue
        try:
            size = psutil.disk_usage(part.mountpoint).total
        except OSError:
            continue
        found.append({"mount": part.mountpoint, "type": part.fstype, "size": size})
    return found


def gpus(root: Path) -> dict[str, Any]:
    """The graphics cards: nvidia-smi's names where it runs, else the kernel's DRM devices' vendors."""
    smi = root / "usr/bin/nvidia-smi"
    if root == Path("/") and smi.exists():
        out = subprocess.run(
            [str(smi), "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=PROGRAM_TIMEOUT, check=True,
        ).stdout
        models = [line.strip() for line in out.splitlines() if line.strip()]
        return {"count": len(models), "vendor": "nvidia" if models else "", "models": models}
    vendors = []
    drm = root / "sys/class/drm"
    for card in sorted(drm.glob("card[0-9]*")) if drm.exists() else []:
        if "-" in card.name:
            continue  # a connector (card0-HDMI-A-1), not a card
        vendor_file = card / "device" / "vendor"
        if vendor_file.exists():
            vendor = vendor_file.read_text().strip()
            vendors.append(GPU_VENDORS.get(vendor, vendor))
    return {"count": len(vendors), "vendor": vendors[0] if vendors else "", "models": vendors}


def virtualization(root: Path) -> str:
    """The container or hypervisor this runs in, or C{none}."""
    if (root / ".dockerenv").exists():
        return "docker"
    if (root / "run/.containerenv").exists():
        return "podman"
    cgroup = root / "proc/1/cgroup"
    if cgroup.exists():
        text = cgroup.read_text(errors="replace")
        for marker, kind in (("kubepods", "kubernetes"), ("docker", "docker"), ("lxc", "lxc")):
            if marker in text:
                return kind
    dmi = root / "sys/class/dmi/id"
    product = " ".join(
        (dmi / name).read_text(errors="replace").strip() for name in ("sys_vendor", "product_name")
        if (dmi / name).exists()
    ).lower()
    for marker, kind in (("qemu", "kvm"), ("kvm", "kvm"), ("vmware", "vmware"), ("virtualbox", "virtualbox"),
                         ("xen", "xen"), ("microsoft", "hyperv"), ("amazon ec2", "kvm"), ("google", "kvm")):
        if marker in product:
            return kind
    return "none"


def addresses() -> list[str]:
    found = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                address = entry.address.split("%")[0]
                if not (address.startswith("127.") or address == "::1" or address.startswith("fe80:")):
                    found.append(address)
    return sorted(set(found))


def custom(directory: Path, errors: dict[str, str]) -> Facts:
    """The facts of C{facts.d}: each file's (an executable's output, or its text), as JSON or C{KEY=VALUE}."""
    found: Facts = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        name = path.name.split(".")[0]
        if not name or path.name.startswith(".") or not path.is_file():
            continue
        try:
            mode = path.stat().st_mode
            if mode & stat.S_IXUSR:
                text = _run(path)
            else:
                text = path.read_bytes()[:MAX_CUSTOM].decode(errors="replace")
            found[name] = _value(text)
        except subprocess.TimeoutExpired:
            errors[f"facts.d/{path.name}"] = f"still running after {PROGRAM_TIMEOUT:g} s: stopped"
        except (OSError, ValueError) as e:
            errors[f"facts.d/{path.name}"] = str(e)
    return found


def _run(program: Path) -> str:
    """
    What a custom fact's program prints.  It runs in a session of its own:
    past its time, all it started is killed, and nothing is left behind.
    """
    child = subprocess.Popen(
        [str(program)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = child.communicate(timeout=PROGRAM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        raise
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # what it left running in the background
        except OSError:
            pass
    if child.returncode != 0:
        why = err.decode(errors="replace").strip()[-200:]
        raise ValueError(f"exited {child.returncode}" + (f": {why}" if why else ""))
    return out[:MAX_CUSTOM].decode(errors="replace")


def _value(text: str) -> Any:
    """JSON if it is; else C{KEY=VALUE} lines as an object; else the text, stripped."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    pairs = key_values(text)
    if pairs and all("=" in line for line in text.strip().splitlines()):
        return pairs
    return text.strip()


#: Seconds between two looks at this machine's facts (sent when they changed).
FACTS_EVERY = 600.0

#: Bytes of facts sent at most; past it, the custom ones are left out, saying so.
MAX_FACTS = 64 * 1024

#: The facts pcci gathers itself (the others come from facts.d).
OWN_FACTS = ("os", "kernel", "arch", "cpus", "memory", "filesystems", "gpu", "virtualization", "addresses",
             "boot_time", "hostname", "python", "pcci", "errors")


def bounded(facts: Facts) -> Facts:
    """The facts, or, when they are over L{MAX_FACTS}, pcci's own and an error saying why."""
    if len(json.dumps(facts)) <= MAX_FACTS:
        return facts
    kept = {k: v for k, v in facts.items() if k in OWN_FACTS}
    kept["errors"] = {**kept.get("errors", {}), "facts.d": f"its facts are over {MAX_FACTS} bytes: left out"}
    return kept


class FactFrames(FramedJSONProtocol):
    """
    The facts half of L{pcci.worker.connection.MasterConnection}: to a
    master whose welcome asks for them, the facts at once, then whenever
    they change (looked at every L{FACTS_EVERY} seconds), and at once when
    it asks (C{facts_refresh}).
    """

    factory: Any

    def __init__(self) -> None:
        self._facts_loop: LoopingCall | None = None
        self._facts_sent: Facts | None = None
        self._gathering = False
        self._refresh_asked = False

    def _handshake_done(self) -> bool:
        raise NotImplementedError

    def start_facts(self, asked: bool) -> None:
        if not asked:
            return
        self._facts_loop = LoopingCall(self._look, False)
        self._facts_loop.clock = self.factory.reactor
        self._facts_loop.start(FACTS_EVERY, now=True).addErrback(
            lambda f: self.log.failure("this machine's facts are no longer looked at", f)
        )

    def stop_facts(self) -> None:
        if self._facts_loop is not None and self._facts_loop.running:
            self._facts_loop.stop()

    def handle_facts_refresh(self, message: dict[str, Any]) -> None:
        if self._handshake_done() and self._facts_loop is not None:
            self._look(True)

    def _look(self, always: bool) -> None:
        if self._gathering:
            self._refresh_asked = self._refresh_asked or always
            return
        self._gathering = True

        def gathered(facts: Facts) -> None:
            if always or self._refresh_asked or facts != self._facts_sent:
                self._facts_sent = facts
                self.sendMessage("facts", facts=bounded(facts))
            self._refresh_asked = False

        d = self.factory.gather_facts()
        d.addCallback(gathered)
        d.addErrback(lambda f: self.log.failure("cannot gather this machine's facts", f))
        d.addBoth(lambda _: setattr(self, "_gathering", False))
