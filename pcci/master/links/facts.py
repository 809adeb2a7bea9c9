"""
The facts frames of a worker's connection: the machine's facts it tells
(C{facts}, kept by the roster), and asking it to look again
(C{facts_refresh}).
"""

from __future__ import annotations

from typing import Any

from pcci.master.cluster.roster import Roster
from pcci.wire import FramedJSONProtocol


class FactFrames(FramedJSONProtocol):
    """The facts half of L{pcci.master.links.connection.WorkerConnection}."""

    name: str
    roster: Roster
    #: Its hello said it tells facts.
    facts: bool

    def _current(self) -> bool:
        raise NotImplementedError

    def handle_facts(self, message: dict[str, Any]) -> None:
        if self._current():
            self.roster.set_facts(self.name, message["facts"])

    def refresh_facts(self) -> bool:
        """Ask it to look at its facts now; whether it can."""
        if self.facts:
            self.sendMessage("facts_refresh")
        return self.facts
