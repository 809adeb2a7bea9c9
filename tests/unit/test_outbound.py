"""Where users' URLs may send the master, and how much of an answer it reads."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from pcci.master.webhooks.outbound import (
    MOST_READ,
    AddressPolicy,
    RefusedURL,
    _Checked,
    bounded_status,
    check_url,
    literal_address,
)

STRICT = AddressPolicy()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/",
        "http://2130706433:9/",  # 127.0.0.1 as one number
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://127.0.0.2/x",
        "http://[::1]:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://[0:0:0:0:0:ffff:7f00:1]/",
        "http://[::127.0.0.1]/",
        "http://[fe80::1%25eth0]/",
        "http://localhost:8080/",
        "http://LOCALHOST./",
        "http://api.localhost/",
        "http://169.254.169.254/latest/meta-data/",  # the cloud's metadata service
        "http://[fe80::1]/",
        "http://0.0.0.0:8080/",
        "http://0/",
        "http://[::]/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
    ],
)
def test_loopback_link_local_and_unspecified_are_refused_in_every_spelling(url: str) -> None:
    with pytest.raises(RefusedURL, match="loopback|link-local|unspecified|multicast"):
        check_url(url, STRICT)


@pytest.mark.parametrize(
    "url, why",
    [
        ("http://user:pw@hooks.example.com/", "user name"),
        ("http://hooks.example.com\\@127.0.0.1/", "backslash"),
        ("http://hooks.example.com /x", "spaces"),
        ("ftp://hooks.example.com/", "http:// or https://"),
        ("http:///nohost", "http:// or https://"),
        ("http://hooks.example.com:99999/", "out of range"),
    ],
)
def test_urls_a_parser_could_read_two_ways_are_refused(url: str, why: str) -> None:
    with pytest.raises(RefusedURL, match=why):
        check_url(url, STRICT)


def test_public_and_private_addresses_and_names_pass_and_an_allow_list_opens_loopback() -> None:
    for url in ("https://hooks.slack.com/services/x", "http://10.1.2.3:8080/", "http://192.168.1.5/"):
        check_url(url, STRICT)
    loopback = AddressPolicy((ipaddress.ip_network("127.0.0.0/8"),))
    assert check_url("http://2130706433:9/", loopback) == "2130706433"
    with pytest.raises(RefusedURL):
        check_url("http://[::1]/", loopback)
    assert literal_address("hooks.example.com") is None
    assert literal_address("0x7f.1") == ipaddress.ip_address("127.0.0.1")


def connect_through(*addresses: str) -> Failure | Any:
    """Connect a checked endpoint whose host resolves to C{addresses}; return the failure or the reactor's call."""
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    endpoint = _Checked(reactor, STRICT, lambda host, port: succeed(list(addresses)), "hooks.example.com", 80, False)
    found: list[Any] = []
    endpoint.connect(object()).addErrback(found.append)
    return found[0] if found else reactor.tcpClients


@pytest.mark.parametrize("addresses", [("127.0.0.1",), ("93.184.216.34", "127.0.0.1"), ("::1",), ("169.254.169.254",)])
def test_a_name_that_resolves_to_a_refused_address_reaches_nothing(addresses: tuple[str, ...]) -> None:
    failure = connect_through(*addresses)
    assert isinstance(failure, Failure) and failure.check(RefusedURL)
    assert "resolves to" in failure.getErrorMessage()


def test_a_name_that_resolves_to_allowed_addresses_connects_to_the_address_checked() -> None:
    (client,) = connect_through("93.184.216.34")
    assert client[0] == "93.184.216.34" and client[1] == 80


class Answer:
    """An answer whose body arrives as the test says."""

    code = 200
    length = None

    def __init__(self) -> None:
        self.protocol: Any = None
        self.transport = StringTransport()

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def test_an_answer_is_read_only_to_a_few_kib_then_the_connection_is_dropped() -> None:
    answer = Answer()
    status: list[int] = []
    bounded_status(answer).addCallback(status.append)  # type: ignore[arg-type]
    for _ in range(10):
        answer.protocol.dataReceived(b"x" * 1024)
        if answer.transport.producerState == "stopped":
            break
    assert answer.transport.producerState == "stopped" and answer.protocol.read <= MOST_READ + 1024
    answer.protocol.connectionLost(Failure(ResponseDone()))
    assert status == [200]


def test_a_short_answer_is_read_whole() -> None:
    answer = Answer()
    status: list[int] = []
    bounded_status(answer).addCallback(status.append)  # type: ignore[arg-type]
    answer.protocol.dataReceived(b"ok")
    answer.protocol.connectionLost(Failure(ResponseDone()))
    assert status == [200] and answer.transport.producerState == "producing"


def test_a_delivery_that_times_out_while_reading_drops_the_connection() -> None:
    answer = Answer()
    d: Deferred[int] = bounded_status(answer)  # type: ignore[arg-type]
    d.addErrback(lambda f: None)
    d.cancel()
    assert answer.transport.producerState == "stopped"
