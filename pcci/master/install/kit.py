"""
The install kit a master serves: its wheel (L{pcci.master.install.wheel}),
the wheelhouse given with C{--wheelhouse}, and C{install.sh} with the
hashes of both written in, so that the one line pinning the script's hash
pins everything the script installs.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool

from pcci.files import sha256_of
from pcci.master.install.wheel import Wheel, build

#: The files of a wheelhouse that are served: wheels (and sources) whose
#: names a shell line and a URL carry as they are.
SERVED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.(whl|tar\.gz|zip)\Z")


@dataclass(frozen=True)
class Kit:
    wheel: Wheel
    #: A wheelhouse's files: name → (path, SHA-256).
    wheelhouse: dict[str, tuple[Path, str]]
    script: bytes

    @property
    def version(self) -> str:
        return self.wheel.version

    @property
    def script_sha256(self) -> str:
        return hashlib.sha256(self.script).hexdigest()

    def line(self, url: str, join: str, token: str, name: str | None) -> str:
        """The line that installs, joins and starts a worker, run as root on the new machine."""
        url = url.rstrip("/")
        words = ["--url", url, "--join", join, "--token", token] + (["--name", name] if name else [])
        run = " ".join(shlex.quote(word) for word in words)
        return (
            f"(f=$(mktemp) && trap 'rm -f \"$f\"' EXIT && curl -fsSL {shlex.quote(url + '/install.sh')} -o \"$f\""
            f" && {{ echo \"{self.script_sha256}  $f\" | sha256sum -c --status"
            " || { echo 'pcci: install.sh does not match the hash in this line: not run' >&2; false; }; }"
            f" && sh \"$f\" {run})"
        )


def read_wheelhouse(where: Path | None) -> dict[str, tuple[Path, str]]:
    """A wheelhouse's served files and their hashes (blocking)."""
    if where is None:
        return {}
    return {
        path.name: (path, sha256_of(path))
        for path in sorted(where.iterdir())
        if path.is_file() and SERVED.match(path.name)
    }


def render(wheel: Wheel, wheelhouse: dict[str, tuple[Path, str]]) -> bytes:
    """C{install.sh}, with the wheel's name and hash and the wheelhouse's hashes written in."""
    template = files("pcci.master.install").joinpath("install.sh").read_text()
    manifest = "\n".join(f"{sha256} {name}" for name, (_, sha256) in wheelhouse.items())
    for mark, value in (
        ("@VERSION@", wheel.version),
        ("@WHEEL@", wheel.name),
        ("@WHEEL_SHA256@", wheel.sha256),
        ("@WHEELHOUSE@", manifest),
    ):
        template = template.replace(mark, value)
    return template.encode()


class InstallKit:
    """Made once, when first asked for, in a thread (a wheelhouse may hold gigabytes to hash)."""

    def __init__(self, reactor: Any, wheelhouse: Path | None) -> None:
        self.reactor = reactor
        self.wheelhouse = wheelhouse
        self._kit: Kit | None = None

    def _make(self) -> Kit:
        wheel = build()
        wheelhouse = read_wheelhouse(self.wheelhouse)
        return Kit(wheel, wheelhouse, render(wheel, wheelhouse))

    def get(self) -> Deferred[Kit]:
        if self._kit is not None:
            return succeed(self._kit)
        # Two asking at once both make it: the same kit, byte for byte.
        making = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._make)
        return making.addCallback(self._keep)

    def _keep(self, kit: Kit) -> Kit:
        self._kit = kit
        return kit
