"""
The handshake of a worker connection, both halves in one place.

A worker says C{hello} (its name, protocol version, nonce, heartbeat,
labels and the jobs it holds); with a cluster secret the master answers
C{challenge} with its nonce and proof, the worker checks that proof and
answers C{auth} with its own, and the master checks it and says
C{welcome}.  Each proof is an HMAC over the worker's name and both nonces
(see L{pcci.auth.proof}), so it is good for one connection and one
direction only.  The protocols hold the connection; these objects only
decide.

Versions: a master speaks L{PROTOCOL_VERSION} and accepts workers of
L{OLDEST_ACCEPTED} on (one version back), speaking to each what it
understands.  A master refuses other versions with a C{bye} that lists what
it C{accepts}; the worker keeps trying, so upgrading the master first and
the workers at leisure never stops a worker for good.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pcci.auth import check_proof, new_nonce, proof
from pcci.labels import check_labels
from pcci.wire import HEARTBEAT_RANGE, PROTOCOL_VERSION, VALID_NAME, ProtocolError, held_jobs

#: The oldest protocol a master of this version accepts from a worker.
OLDEST_ACCEPTED = PROTOCOL_VERSION - 1

#: The protocol that brought a feature a master uses only with the workers
#: that speak it (those of the version before have the rest: see docs/protocol.md).
SHELLS = 5  # shell_open and the frames of a shell

#: Longest nonce accepted from a worker.
MAX_NONCE = 128

#: What a version looks like: 2.0.0, 2.1.0.dev3, 3.11.7, 3.13.0rc1+.
VERSION_TEXT = re.compile(r"[0-9A-Za-z.+-]{1,40}\Z")


def accepts(version: int) -> bool:
    """Whether a master of this pcci takes a worker speaking C{version}."""
    return OLDEST_ACCEPTED <= version <= PROTOCOL_VERSION


def refusal(version: int) -> dict[str, Any]:
    """The fields of the C{bye} that refuses a worker speaking C{version}."""
    return {
        "reason": (
            f"master speaks protocol {PROTOCOL_VERSION} and accepts"
            f" {OLDEST_ACCEPTED} to {PROTOCOL_VERSION}, not {version}"
        ),
        # A worker keeps trying: the master may be upgraded (or the worker).
        "reconnect": True,
        "accepts": list(range(OLDEST_ACCEPTED, PROTOCOL_VERSION + 1)),
    }


def is_version_refusal(bye: dict[str, Any]) -> bool:
    """
    Whether a C{bye} refuses this worker for its protocol version: from
    this pcci (it lists what it accepts) or from an older master (its
    reason said so, and it asked the worker never to come back).
    """
    return "accepts" in bye or str(bye.get("reason", "")).startswith("master speaks protocol")


@dataclass(frozen=True)
class Hello:
    """A worker's C{hello}, checked."""

    name: str
    version: int
    nonce: str
    heartbeat: float
    labels: dict[str, str]
    #: The jobs the worker holds: C{{"pool", "ended"}} each.
    jobs: list[dict[str, Any]]
    #: The worker remembers every job it was sent, across restarts: a
    #: master may ask again for a job it may never have had (C{run} with
    #: C{sent_ago}; see L{pcci.worker.received}).
    remembers_jobs: bool = False
    #: Its output pieces' C{seq} run without a gap: a stretch dropped past
    #: its cap is one note numbered C{first}..C{seq}, and its C{ended} says
    #: the last piece's C{seq}.  A master then drops a piece that arrives
    #: past a gap, and asks for what it missed (see
    #: L{pcci.master.cluster.dispatch.Dispatcher.job_output}).
    contiguous_seq: bool = False
    #: The pcci and Python it runs, as it says them ("" from a worker too old to say).
    pcci_version: str = ""
    python_version: str = ""
    #: It can upgrade itself when the master asks (C{upgrade}).
    upgrades: bool = False
    #: It tells its machine's facts, and looks again when asked (C{facts_refresh}).
    facts: bool = False

    @classmethod
    def parse(cls, message: dict[str, Any], secret: bytes | None) -> Hello:
        """
        The hello's fields, checked (its version is not: see L{accepts}).

        @raise ProtocolError: a field out of its rules; the connection goes.
        """
        name = message["name"]
        if not VALID_NAME.match(name):
            raise ProtocolError(f"invalid worker name {name!r}")
        low, high = HEARTBEAT_RANGE
        if not low <= message["heartbeat"] <= high:
            raise ProtocolError(f"a heartbeat interval out of [{low}, {high}]")
        try:
            labels = check_labels(message.get("labels"))
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        nonce = message["nonce"]
        if secret is not None and not 16 <= len(nonce) <= MAX_NONCE:
            raise ProtocolError("a hello without a proper nonce")
        return cls(
            name=name,
            version=message["version"],
            nonce=nonce,
            heartbeat=float(message["heartbeat"]),
            labels=labels,
            jobs=held_jobs(message),
            remembers_jobs=message.get("remembers_jobs") is True,
            contiguous_seq=message.get("contiguous_seq") is True,
            pcci_version=_version(message.get("pcci_version")),
            python_version=_version(message.get("python_version")),
            upgrades=message.get("upgrades") is True,
            facts=message.get("facts") is True,
        )


def _version(said: Any) -> str:
    """A version a worker says of itself, if it is one (a short run of letters, digits and C{.+-}); else ""."""
    return said if isinstance(said, str) and VERSION_TEXT.match(said) else ""


class MasterHandshake:
    """The master's half: challenges a worker that said C{hello}, checks its C{auth}."""

    def __init__(self, secret: bytes, hello: Hello) -> None:
        self.secret = secret
        self.hello = hello
        self.nonce = new_nonce()

    def challenge(self) -> dict[str, str]:
        """The C{challenge}'s fields: this master's nonce and proof."""
        return {
            "nonce": self.nonce,
            "proof": proof(self.secret, "master", self.hello.name, self.nonce, self.hello.nonce),
        }

    def check_auth(self, message: dict[str, Any]) -> bool:
        """Whether the worker's C{auth} proves it holds the secret."""
        return check_proof(
            self.secret, "worker", self.hello.name, self.hello.nonce, self.nonce, message["proof"]
        )


class WorkerHandshake:
    """The worker's half: says C{hello}, checks the master's C{challenge}, answers C{auth}."""

    def __init__(self, secret: bytes | None, name: str) -> None:
        self.secret = secret
        self.name = name
        self.nonce = new_nonce()
        #: The master proved it holds the cluster secret.
        self.master_proven = False

    def hello(self, **fields: Any) -> dict[str, Any]:
        """The C{hello}'s fields: this worker's name, version and nonce, and C{fields}."""
        return {"name": self.name, "version": PROTOCOL_VERSION, "nonce": self.nonce, **fields}

    def answer(self, challenge: dict[str, Any]) -> dict[str, str] | None:
        """
        The C{auth}'s fields for a C{challenge} whose proof is right; None
        when it is wrong, or comes a second time.

        @raise ValueError: this worker has no secret to answer with.
        """
        if self.secret is None:
            raise ValueError("no cluster secret")
        if self.master_proven or not check_proof(
            self.secret, "master", self.name, challenge["nonce"], self.nonce, challenge["proof"]
        ):
            return None
        self.master_proven = True
        return {"proof": proof(self.secret, "worker", self.name, self.nonce, challenge["nonce"])}

    def may_be_welcomed(self) -> bool:
        """A C{welcome} is good from a master that proved itself, or when no secret is kept."""
        return self.secret is None or self.master_proven
