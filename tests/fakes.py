"""Test doubles shared by the unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class FakeLink:
    """A worker connection that records what the state asked of it."""

    name: str
    address: str = "192.0.2.1:5000"
    connected_at: float = 0.0
    heartbeat: float = 5.0
    labels: dict[str, str] = field(default_factory=dict)
    held_jobs: list[dict[str, Any]] = field(default_factory=list)
    master: str | None = None
    remembers_jobs: bool = False
    contiguous_seq: bool = False
    attached: list[tuple[str, int]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)
    runs: list[tuple[str, str]] = field(default_factory=list)
    #: The options of each run, in order.
    options: list[dict[str, Any]] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    dismissed: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    upgrade_orders: list[dict[str, Any]] = field(default_factory=list)
    auth: str = "secret"
    pcci_version: str = "2.0.0"
    python_version: str = "3.11.2"
    upgrades: bool = False
    tells_facts: bool = False
    facts_refreshes: int = 0

    def run_job(self, pool_id: str, cmd: str, options: dict[str, Any]) -> None:
        self.runs.append((pool_id, cmd))
        self.options.append(options)

    def kill_job(self, pool_id: str) -> None:
        self.kills.append(pool_id)

    def upgrade(self, order: dict[str, Any]) -> None:
        self.upgrade_orders.append(order)

    def refresh_facts(self) -> bool:
        self.facts_refreshes += self.tells_facts
        return self.tells_facts

    def attach_job(self, pool_id: str, after: int) -> None:
        self.attached.append((pool_id, after))

    def ack_job(self, pool_id: str) -> None:
        self.acked.append(pool_id)

    def dismiss(self, reason: str) -> None:
        self.dismissed.append(reason)

    def revoke(self, reason: str) -> None:
        self.revoked.append(reason)


def started(d: Any) -> Any:
    """The result of a Deferred that has fired (a pool submitted without a
    store, or with one whose write already happened)."""
    found: list[Any] = []
    d.addBoth(found.append)
    assert found, "the Deferred has not fired"
    (value,) = found
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


class FakeShellClient:
    """The user's side of a shell (L{pcci.master.cluster.shells.ShellClient}), as it was told."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.received: list[tuple[str, bytes]] = []
        self.end: tuple[int | None, str] | None = None
        self.input_paused = False

    def started(self, pid: int) -> None:
        self.pid = pid

    def output(self, stream: str, data: bytes) -> None:
        self.received.append((stream, data))

    def ended(self, status: int | None, reason: str) -> None:
        assert self.end is None, "ended twice"
        self.end = (status, reason)

    def pause_input(self) -> None:
        self.input_paused = True

    def resume_input(self) -> None:
        self.input_paused = False
