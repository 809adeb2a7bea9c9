"""The master's connection limits, over StringTransport with a Clock."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.pages import notFound
from twisted.web.server import Site

from pcci.master.http.guards import bounded_request
from pcci.master.http.limits import ConnectionBudget, ConnectionLimit


def connect(limit: ConnectionLimit, host: str = "192.0.2.1", port: int = 1):
    protocol = limit.buildProtocol(IPv4Address("TCP", host, port))
    if protocol is None:
        return None, None
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    protocol.makeConnection(transport)
    return protocol, transport


def plain(clock: Clock, per_address: int = 3, budget: ConnectionBudget | None = None,
          kind: str = "workers") -> ConnectionLimit:
    return ConnectionLimit(Factory.forProtocol(Protocol), per_address, clock, budget, kind)


def test_proven_peers_stop_counting_against_their_address() -> None:
    limit = plain(Clock(), per_address=3)
    joined = []
    for port in range(100):  # a lab behind one NAT address
        protocol, _ = connect(limit, port=port)
        assert protocol is not None, f"connection {port} refused"
        limit.prove(protocol)
        joined.append(protocol)
    strangers = [connect(limit, port=1000 + i)[0] for i in range(4)]
    assert [s is not None for s in strangers] == [True, True, True, False]


def test_closed_connections_give_their_room_back() -> None:
    limit = plain(Clock(), per_address=1)
    protocol, transport = connect(limit)
    assert connect(limit, port=2)[0] is None
    protocol.connectionLost(None)
    assert connect(limit, port=3)[0] is not None


def test_a_full_api_closes_its_longest_idle_connection_first() -> None:
    clock = Clock()
    budget = ConnectionBudget(total=8, workers_reserve=4)
    limit = plain(clock, per_address=100, budget=budget, kind="api")
    opened = []
    for port in range(4):
        clock.advance(1)
        opened.append(connect(limit, port=port))
    busy, _ = opened[0]
    busy.request_arrived()  # a request under way is never closed for room
    newcomer, _ = connect(limit, port=99)
    assert newcomer is not None
    assert [t.disconnecting for _, t in opened] == [False, True, False, False]
    assert budget.open["api"] == 4


def test_workers_keep_their_reserve_and_the_rest() -> None:
    budget = ConnectionBudget(total=8, workers_reserve=4)
    api = plain(Clock(), per_address=100, budget=budget, kind="api")
    workers = plain(Clock(), per_address=100, budget=budget, kind="workers")
    for port in range(4):
        busy, _ = connect(api, port=port)
        busy.request_arrived()
    assert connect(api, port=50)[0] is None  # the API's share is spent
    assert all(connect(workers, port=p)[0] is not None for p in range(4))
    assert connect(workers, port=60)[0] is None  # every file is spent


def http(clock: Clock, timeout: float = 5.0) -> ConnectionLimit:
    site = Site(notFound(), requestFactory=bounded_request(1024), reactor=clock)
    return ConnectionLimit(site, 100, clock, receive_timeout=timeout)


def test_the_request_deadline_starts_at_accept() -> None:
    clock = Clock()
    protocol, transport = connect(http(clock))
    for byte in b"GET /health HTTP/1.1\r\n"[:10]:  # one byte a second
        protocol.dataReceived(bytes([byte]))
        clock.advance(0.6)
    assert b"408 Request Timeout" in transport.value()
    assert transport.disconnecting


def test_each_request_gets_a_fresh_deadline() -> None:
    clock = Clock()
    protocol, transport = connect(http(clock))
    for _ in range(3):
        clock.advance(4)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"404" in transport.value() and not transport.disconnecting
        transport.clear()
    clock.advance(5)
    assert b"408" in transport.value()
