"""
Requests the master sends where users ask (a pool's C{notify} URLs), and
to its own C{--webhook} URLs: which addresses they may reach, and how.

A URL a user gives is checked twice.  When given: its form (http or
https, a host, no user name, nothing a parser could read two ways) and,
when its host is an address in any spelling (C{2130706433},
C{0x7f000001}, C{127.1}, C{[::ffff:127.0.0.1]}), that address.  When
sent: the host is resolved, every address it resolves to is checked, and
the connection goes to the address checked, so a name that changes its
answer in between reaches nothing new.  Loopback, link-local, unspecified,
multicast and broadcast addresses are refused unless C{--notify-allow}
lists them.  No request follows a redirect, and no answer is read past
L{MOST_READ} bytes: the connection is dropped there.
"""

from __future__ import annotations

import io
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Callable, Union, cast
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: Bytes of an answer read at most; the connection is dropped past them.
MOST_READ = 4096

#: Seconds a connection may take to open.
CONNECT_TIMEOUT = 5.0

_BROADCAST = ipaddress.ip_address("255.255.255.255")
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class RefusedURL(ValueError):
    """A URL the master will not send to; the message says why."""


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses users' URLs may reach: all but the refused kinds, save those C{allowed}."""

    allowed: tuple[Network, ...] = ()

    def refusal(self, address: Address) -> str | None:
        """Why C{address} may not be reached (None: it may)."""
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            elif address in _IPV4_COMPATIBLE and int(address) > 1:  # ::127.0.0.1, deprecated but parsed
                address = ipaddress.IPv4Address(int(address))
        if any(address in network for network in self.allowed):
            return None
        if address.is_loopback:
            return "a loopback address"
        if address.is_link_local:
            return "a link-local address"
        if address.is_unspecified or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK):
            return "an unspecified address"
        if address.is_multicast or address == _BROADCAST:
            return "a multicast or broadcast address"
        return None


def literal_address(host: str) -> Address | None:
    """C{host} as an IP address when it is one, in any spelling C{inet_aton} takes; else None."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def check_url(url: str, policy: AddressPolicy) -> str:
    """
    The URL's host, once its form and (for an address) its address pass.

    @raise RefusedURL: saying why not.
    """
    if any(char.isspace() or ord(char) < 0x20 for char in url) or "\\" in url:
        raise RefusedURL(f"{url!r}: spaces, control characters and backslashes are refused")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise RefusedURL(f"{url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedURL(f"{url!r}: an http:// or https:// URL with a host is needed")
    if "@" in parts.netloc:
        raise RefusedURL(f"{url!r}: a user name or password in the URL is refused")
    if port == 0:
        raise RefusedURL(f"{url!r}: port 0 is refused")
    host = parts.hostname.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        address: Address | None = ipaddress.ip_address("127.0.0.1")  # RFC 6761: always loopback
    else:
        address = literal_address(host)
    if address is not None:
        why = policy.refusal(address)
        if why is not None:
            raise RefusedURL(f"{url!r}: {parts.hostname} is {why} (see --notify-allow)")
    return parts.hostname


#: Resolves a host and port to the addresses to try, in order.
Resolve = Callable[[str, int], "Deferred[list[str]]"]


def resolve_in_thread(host: str, port: int) -> Deferred[list[str]]:
    """The host's addresses, from C{getaddrinfo} in the reactor's thread pool."""

    def lookup() -> list[str]:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in found))

    return deferToThread(lookup)


class _Checked:
    """A connection to a host's address once every address it resolves to is allowed."""

    def __init__(self, reactor: Any, policy: AddressPolicy, resolve: Resolve, host: str, port: int, tls: bool):
        self.reactor = reactor
        self.policy = policy
        self.resolve = resolve
        self.host, self.port, self.tls = host, port, tls

    def connect(self, factory: Any) -> Deferred[Any]:
        def chosen(addresses: list[str]) -> Deferred[Any]:
            if not addresses:
                raise RefusedURL(f"{self.host} resolves to no address")
            for text in addresses:
                why = self.policy.refusal(ipaddress.ip_address(text.split("%")[0]))
                if why is not None:
                    raise RefusedURL(f"{self.host} resolves to {text}, {why} (see --notify-allow)")
            first = ipaddress.ip_address(addresses[0].split("%")[0])
            kind = TCP4ClientEndpoint if first.version == 4 else TCP6ClientEndpoint
            endpoint: Any = kind(self.reactor, addresses[0], self.port, timeout=CONNECT_TIMEOUT)
            if self.tls:
                endpoint = wrapClientTLS(optionsForClientTLS(self.host), endpoint)
            return endpoint.connect(factory)

        return self.resolve(self.host, self.port).addCallback(chosen)


@implementer(IAgentEndpointFactory)
class _CheckedEndpoints:
    def __init__(self, reactor: Any, policy: AddressPolicy, resolve: Resolve) -> None:
        self.reactor, self.policy, self.resolve = reactor, policy, resolve

    def endpointForURI(self, uri: Any) -> _Checked:
        host = uri.host.decode("idna").strip("[]")
        return _Checked(self.reactor, self.policy, self.resolve, host, uri.port, uri.scheme == b"https")


class _Discard(Protocol):
    """Reads an answer's body up to L{MOST_READ} bytes, then drops the connection."""

    def __init__(self, done: Deferred[None]) -> None:
        self.done = done
        self.read = 0

    def dataReceived(self, data: bytes) -> None:
        self.read += len(data)
        if self.read > MOST_READ:
            self.stop()

    def stop(self) -> None:
        """Read no more: the response's transport stops, the body is cut."""
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(None)


def bounded_status(response: IResponse) -> Deferred[int]:
    """The answer's status, once at most L{MOST_READ} bytes of its body were read (the rest never is)."""
    if response.length == 0:
        return succeed(response.code)
    done: Deferred[None] = Deferred(lambda d: protocol.stop())
    protocol = _Discard(done)
    response.deliverBody(protocol)
    return done.addCallback(lambda _: response.code)


#: Sends C{body} to C{url} with C{headers}; C{user} for a user's URL (checked: see L{check_url}).
Post = Callable[[str, bytes, "dict[bytes, list[bytes]]", bool], "Deferred[int]"]


def http_post(reactor: Any, policy: AddressPolicy, resolve: Resolve = resolve_in_thread) -> Post:
    """L{Post} over Twisted's HTTP client: no redirect followed, answers read bounded, users' URLs checked."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    plain = Agent(reactor, connectTimeout=CONNECT_TIMEOUT, pool=pool)
    checked = Agent.usingEndpointFactory(reactor, _CheckedEndpoints(reactor, policy, resolve), pool=pool)

    def post(url: str, body: bytes, headers: dict[bytes, list[bytes]], user: bool) -> Deferred[int]:
        if user:
            check_url(url, policy)
        agent = checked if user else plain
        d = agent.request(b"POST", url.encode("ascii"), Headers(headers), FileBodyProducer(io.BytesIO(body)))
        return d.addCallback(bounded_status)

    return post
