"""
The master's ear on PostgreSQL: C{LISTEN} on the masters' channel.

A thread of its own holds one connection in autocommit mode and waits on
it for notifications, handing each payload to the reactor; every
C{PING_INTERVAL} seconds it proves the connection alive with a query.
A connection that breaks is made again, with backoff.  Notifications sent
while no connection listened are lost for good (PostgreSQL never replays
them), so each new connection is announced (C{on_listening}) and the
master reads the tables again then.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from twisted.logger import Logger

from pcci.master.store.postgres import CONNECTION_SETTINGS, _first_line
from pcci.master.store.shared import CHANNEL

log = Logger()

#: Seconds between the listening connection's proofs of life.
PING_INTERVAL = 2.0

#: Seconds before listening again after a failure, doubling up to the most.
RETRY_FIRST = 0.5
RETRY_MOST = 10.0


class NotifyListener:
    """Hands C{on_notify(payload)} each notification, in the reactor's thread."""

    def __init__(
        self,
        url: str,
        reactor: Any,
        on_notify: Callable[[str], None],
        on_listening: Callable[[], None],
    ) -> None:
        self.url = url
        self.reactor = reactor
        self.on_notify = on_notify
        self.on_listening = on_listening
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # A daemon thread: it may be blocked in a read when the master exits.
        self._thread = threading.Thread(target=self._listen, name="pcci-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _listen(self) -> None:
        import psycopg

        delay = RETRY_FIRST
        failing = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, **CONNECTION_SETTINGS) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    delay, failing = RETRY_FIRST, False
                    self.reactor.callFromThread(self.on_listening)
                    while not self._stopping.is_set():
                        for notify in connection.notifies(timeout=PING_INTERVAL):
                            self.reactor.callFromThread(self.on_notify, notify.payload)
                        connection.execute("SELECT 1")
            except psycopg.Error as e:
                if not failing and not self._stopping.is_set():
                    self.reactor.callFromThread(
                        log.warn, "not listening to the other masters: {why}; trying again",
                        why=_first_line(e),
                    )
                failing = True
            self._stopping.wait(delay)
            delay = min(delay * 2, RETRY_MOST)
