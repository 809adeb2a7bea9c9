"""What a worker's options set (see C{twistd pcci-worker --help}), as one value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Seconds between heartbeats.
DEFAULT_HEARTBEAT = 5.0


@dataclass(frozen=True)
class WorkerSettings:
    name: str
    #: The cluster secret (None: a master with C{--no-auth}, or an identity).
    secret: bytes | None = None
    #: Seconds between a job's SIGTERM and its SIGKILL.
    kill_grace: float = 5.0
    heartbeat: float = DEFAULT_HEARTBEAT
    #: The file system whose use the heartbeat reports.
    disk: str = "/"
    #: Jobs run at once (None: one per CPU, see L{pcci.worker.jobs.default_max_jobs}).
    max_jobs: int | None = None
    #: What this worker says of itself, for targeting (None: the defaults).
    labels: dict[str, str] | None = None
    #: The journal of its jobs, in its state directory (None: it keeps none).
    journal: Path | None = None
    #: Ask a master that welcomed it by the secret for an identity.
    enroll: bool = False

    @property
    def state_dir(self) -> Path | None:
        return None if self.journal is None else self.journal.parent
