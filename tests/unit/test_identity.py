"""
Identities: the cluster CA, certificate requests, pins, join tokens and the
enrollment's rules, with a Clock for time and a real SQLite store run at once.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fakes import started as result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store import SyncStore
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from pcci.identity import (
    IdentityError,
    JoinToken,
    WorkerIdentity,
    certificate_labels,
    certificate_pin,
    check_pinned_chain,
    common_name,
    is_worker_certificate,
    key_fingerprint,
    make_request,
    new_key,
)
from pcci.master.access.ca import ClusterCA, check_request
from pcci.master.access.enrollment import Enrollment, Refused, TokenRequest
from pcci.master.store.sqlite import open_database
from pcci.worker.settings import WorkerSettings

START = 1_800_000_000.0


@pytest.fixture
def ca() -> ClusterCA:
    return ClusterCA.create()


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(START)
    return clock


def enrollment(ca: ClusterCA, clock: Clock, tmp_path: Path, approve_all: bool = False) -> Enrollment:
    return Enrollment(SyncStore(open_database(str(tmp_path / "pcci.db"))).identities, ca, clock.seconds, approve_all)


def refusal(d: Any) -> Refused:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures, "not refused"
    value = failures[0].value
    assert isinstance(value, Refused)
    return value


def token_for(e: Enrollment, **fields: Any) -> str:
    token, view = result(e.create_token(TokenRequest.parse(fields), "admin"))
    assert "secret" not in str(view) and token.secret not in str(view)
    return str(token)


# The CA and what it signs


def test_the_ca_is_made_once_in_its_directory_and_its_key_kept_private(tmp_path: Path) -> None:
    first = ClusterCA.open(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    again = ClusterCA.open(tmp_path)
    assert again.pin == first.pin
    (tmp_path / "ca.key").write_text(open_key_of_another_ca())
    with pytest.raises(IdentityError, match="is not the key of"):
        ClusterCA.open(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(IdentityError, match="cannot read the cluster CA"):
        ClusterCA.open(tmp_path)


def open_key_of_another_ca() -> str:
    from pcci.identity import key_pem

    return key_pem(ClusterCA.create().key).decode()


def test_a_worker_certificate_names_the_worker_whatever_its_request_says(ca: ClusterCA) -> None:
    key = new_key()
    request = check_request(make_request(key, "db1"))
    certificate = ca.sign_worker(request, "pi01")
    assert common_name(certificate) == "pi01"
    assert is_worker_certificate(certificate)
    assert key_fingerprint(certificate) == key_fingerprint(request)
    certificate.verify_directly_issued_by(ca.certificate)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not a certificate signing request"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a certificate"),
        ("\u00e9" * 50, "not a certificate signing request"),
    ],
)
def test_a_request_that_is_not_one_is_refused(text: str, why: str) -> None:
    with pytest.raises(IdentityError, match=why):
        check_request(text)


def test_a_request_with_a_weak_or_foreign_key_is_refused() -> None:
    weak = rsa.generate_private_key(65537, 1024)
    with pytest.raises(IdentityError, match="1024 bits"):
        check_request(make_request(weak, "w"))  # type: ignore[arg-type]
    curve = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(IdentityError, match="secp521r1"):
        check_request(make_request(curve, "w"))


def test_a_request_whose_signature_does_not_hold_is_refused() -> None:
    import base64

    from cryptography.hazmat.primitives import serialization

    request = x509.load_pem_x509_csr(make_request(new_key(), "w").encode())
    der = bytearray(request.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # a bit of the signature
    pem = "-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)).decode()
    pem += "-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(IdentityError, match="signature"):
        check_request(pem)


# Pins


def test_a_master_chain_passes_its_own_pin_and_no_other(ca: ClusterCA) -> None:
    options = ca.server_tls()
    leaf = options.certificate.to_cryptography()
    check_pinned_chain([leaf, ca.certificate], ca.pin)
    with pytest.raises(IdentityError, match="does not match the token's pin"):
        check_pinned_chain([leaf, ca.certificate], ClusterCA.create().pin)
    # A chain that carries the pinned CA, but a leaf another CA signed.
    stranger = ClusterCA.create().server_tls().certificate.to_cryptography()
    with pytest.raises(IdentityError, match="not its CA's"):
        check_pinned_chain([stranger, ca.certificate], ca.pin)
    # A worker's certificate of the right CA is not a master's.
    worker = ca.sign_worker(check_request(make_request(new_key(), "w")), "w")
    with pytest.raises(IdentityError):
        check_pinned_chain([worker, ca.certificate], ca.pin)
    assert certificate_pin(ca.certificate) == ca.pin


def test_a_join_token_reads_back_and_anything_else_is_refused(ca: ClusterCA) -> None:
    token = JoinToken.new(ca.pin)
    assert JoinToken.parse(f"  {token}\n") == token
    assert len(str(token)) < 80
    for bad in ("", "abc", str(token)[:-1], str(token).upper(), str(token) + "x"):
        with pytest.raises(IdentityError, match="not a join token"):
            JoinToken.parse(bad)


def test_a_worker_keeps_its_identity_private_and_for_its_name_only(tmp_path: Path, ca: ClusterCA) -> None:
    identity = WorkerIdentity.fresh(tmp_path, "pi01")
    assert WorkerIdentity.load(tmp_path, "pi01") is None  # a key, no certificate yet
    certificate = ca.sign_worker(check_request(identity.request()), "pi01")
    from pcci.identity import certificate_pem

    identity.keep(certificate_pem(certificate), ca.pem)
    for path in (tmp_path / "identity").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    loaded = WorkerIdentity.load(tmp_path, "pi01")
    assert loaded is not None and loaded.certificate == certificate
    other = ca.sign_worker(check_request(make_request(new_key(), "pi02")), "pi01")
    with pytest.raises(IdentityError, match="another key or name"):
        identity.keep(certificate_pem(other), ca.pem)
    for suffix in (".key", ".crt", ".ca.crt"):
        (tmp_path / "identity" / f"pi02{suffix}").write_bytes((tmp_path / "identity" / f"pi01{suffix}").read_bytes())
    with pytest.raises(IdentityError, match="identity of 'pi01', not 'pi02'"):
        WorkerIdentity.load(tmp_path, "pi02")


def test_a_certificate_is_renewed_in_its_last_month(tmp_path: Path, ca: ClusterCA) -> None:
    identity = WorkerIdentity.fresh(tmp_path, "w")
    from pcci.identity import certificate_pem

    identity.keep(certificate_pem(ca.sign_worker(check_request(identity.request()), "w")), ca.pem)
    ends = identity.certificate.not_valid_after_utc.timestamp()  # type: ignore[union-attr]
    assert not identity.needs_renewal(ends - 31 * 86400)
    assert identity.needs_renewal(ends - 29 * 86400)


# Join tokens and the enrollment's rules


def join(e: Enrollment, token: str, name: str = "pi01", key: Any = None) -> Any:
    return e.join(token, name, make_request(key or new_key(), name), "192.0.2.7:5000")


def test_a_token_joins_once_binds_its_labels_and_is_then_used_up(ca: ClusterCA, clock: Clock, tmp_path: Path) -> None:
    e = enrollment(ca, clock, tmp_path)
    token = token_for(e, name="pi*", labels={"room": "b12"})
    signed = result(join(e, token))
    assert signed.state == "approved" and signed.ca == ca.pem
    certificate = x509.load_pem_x509_certificate(signed.certificate.encode())
    assert common_name(certificate) == "pi01"
    assert certificate_labels(certificate) == {"room": "b12"}  # the certificate binds them too
    identity = result(e.store.get("pi01"))
    assert identity.record["labels"] == {"room": "b12"}  # the token's: the worker's own come with each hello
    assert refusal(join(e, token, "pi02")).reason == "join token used up"
    assert [t["state"] for t in result(e.tokens())] == ["used"]


def test_a_token_expires_by_the_clock(ca: ClusterCA, clock: Clock, tmp_path: Path) -> None:
    e = enrollment(ca, clock, tmp_path)
    token = token_for(e, ttl=60, uses=5)
    clock.advance(59.9)
    result(join(e, token, "a"))
    clock.advance(0.1)
    refused = refusal(join(e, token, "b"))
    assert (refused.code, refused.reason) == ("token", "join token expired")
    assert [t["state"] for t in result(e.tokens())] == ["expired"]


def test_a_revoked_unknown_or_forged_token_joins_nobody(ca: ClusterCA, clock: Clock, tmp_path: Path) -> None:
    e = enrollment(ca, clock, tmp_path)
    token = token_for(e, uses=3)
    parsed = JoinToken.parse(token)
    forged = str(JoinToken(parsed.id, "a" * 26, parsed.pin))
    assert refusal(join(e, forged)).reason == "unknown join token"
    assert refusal(join(e, str(JoinToken.new(ca.pin)))).reason == "unknown join token"
    assert refusal(join(e, "garbage")).code == "token"
    assert result(e.revoke_token(parsed.id, "admin"))
    assert refusal(join(e, token)).reason == "join token revoked"
    assert not result(e.revoke_token("nope", "admin"))


def test_a_name_outside_the_pattern_or_owned_by_another_key_is_refused(
    ca: ClusterCA, clock: Clock, tmp_path: Path
) -> None:
    e = enrollment(ca, clock, tmp_path)
    token = token_for(e, name="lab[0-9][0-9]", uses=5)
    refused = refusal(join(e, token, "db1"))
    assert refused.code == "name" and "outside this token's pattern" in refused.reason
    assert refusal(join(e, token, "bad name")).code == "name"
    result(join(e, token, "lab01"))
    refused = refusal(join(e, token, "lab01"))
    assert refused.code == "name" and "belongs to another worker's key" in refused.reason
    # The refused join did not spend a use.
    assert [t["used"] for t in result(e.tokens())] == [1]


def test_a_request_that_is_not_one_spends_nothing(ca: ClusterCA, clock: Clock, tmp_path: Path) -> None:
    e = enrollment(ca, clock, tmp_path)
    token = token_for(e)
    refused = refusal(e.join(token, "w", "not a request", "192.0.2.7:1"))
    assert refused.code == "csr"
    result(join(e, token, "w"))


def test_approval_deny_and_revocation_decide_who_may_connect(ca: ClusterCA, clock: Clock, tmp_path: Path) -> None:
    e = enrollment(ca, clock, tmp_path)
    key = new_key()
    fingerprint = key_fingerprint(check_request(make_request(key, "w")))
    assert result(join(e, token_for(e, approve=True), "w", key)).state == "pending"
    assert result(e.admit("w", fingerprint))[0] == "pending"
    assert [i["name"] for i in result(e.pending())] == ["w"]
    assert result(e.decide("w", "approve", "admin")).state == "approved"
    assert result(e.decide("w", "approve", "admin")) is None  # no longer pending
    assert result(e.admit("w", fingerprint))[0] is None
    assert result(e.admit("w", "SHA256:another"))[0] == "unknown"
    assert result(e.owned("w"))
    assert result(e.decide("w", "revoke", "admin")).state == "revoked"
    assert result(e.admit("w", fingerprint))[0] == "revoked"
    assert not result(e.owned("w"))
    # Back only with a new token (and a new key, or the same).
    assert result(join(e, token_for(e), "w", key)).state == "approved"
    assert result(e.admit("w", fingerprint))[0] is None


def test_a_master_that_approves_every_worker_holds_each_pending(ca: ClusterCA, clock: Clock, tmp_path: Path) -> None:
    e = enrollment(ca, clock, tmp_path, approve_all=True)
    assert result(join(e, token_for(e))).state == "pending"
    assert result(e.decide("pi01", "deny", "admin")).state == "denied"


def test_enrollment_by_the_secret_never_takes_an_owned_name(ca: ClusterCA, clock: Clock, tmp_path: Path) -> None:
    e = enrollment(ca, clock, tmp_path)
    result(join(e, token_for(e), "db1"))
    refused = refusal(e.enroll("db1", make_request(new_key(), "db1"), "192.0.2.9:1"))
    assert refused.code == "name"
    signed = result(e.enroll("old1", make_request(new_key(), "old1"), "192.0.2.9:1"))
    assert signed.state == "approved"
    assert result(e.store.get("old1")).record["how"] == "enroll"


def test_a_renewal_is_for_the_same_key_of_an_approved_identity(ca: ClusterCA, clock: Clock, tmp_path: Path) -> None:
    e = enrollment(ca, clock, tmp_path)
    key = new_key()
    result(join(e, token_for(e), "w", key))
    fingerprint = key_fingerprint(check_request(make_request(key, "w")))
    renewed = result(e.renew("w", fingerprint, make_request(key, "w")))
    assert common_name(x509.load_pem_x509_certificate(renewed.certificate.encode())) == "w"
    assert refusal(e.renew("w", fingerprint, make_request(new_key(), "w"))).code == "csr"
    result(e.decide("w", "revoke", "admin"))
    assert refusal(e.renew("w", fingerprint, make_request(key, "w"))).code == "revoked"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"uses": 0}, "uses"),
        ({"uses": True}, "uses"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": 10**9}, "ttl"),
        ({"name": ""}, "name"),
        ({"approve": "yes"}, "approve"),
        ({"labels": {"bad key": "x"}}, "label"),
        ({"colour": "red"}, "a join token has no colour"),
    ],
)
def test_a_token_request_out_of_its_rules_is_refused(body: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        TokenRequest.parse(body)


# The wire: a master's port, a worker's connection


def port(e: Enrollment, clock: Clock, mode: str = "identity", tls: bool = True) -> tuple[Any, Any]:
    """A master's connection on a TLS port (without a certificate) taking joins for C{e}."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from pcci.master.cluster.state import ClusterState
    from pcci.master.links.admission import Gate
    from pcci.master.links.connection import WorkerPortFactory

    state = ClusterState(clock)
    factory = WorkerPortFactory(state, clock, Gate(mode, None, e, None))
    connection = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 5000))
    connection.tls = tls
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 5000))
    connection.makeConnection(transport)
    return connection, transport


def said(transport: Any) -> list[dict[str, Any]]:
    import json

    from pcci.wire import TERMINATOR

    return [json.loads(frame) for frame in transport.value().split(TERMINATOR) if frame]


def test_a_join_over_the_wire_gets_a_certificate_and_the_connection_closes(
    ca: ClusterCA, clock: Clock, tmp_path: Path
) -> None:
    from pcci.wire import encode

    e = enrollment(ca, clock, tmp_path)
    connection, transport = port(e, clock)
    request = make_request(new_key(), "pi01")
    connection.dataReceived(encode({"code": "join", "token": token_for(e), "name": "pi01", "csr": request}))
    (answer,) = said(transport)
    assert answer["code"] == "certificate" and answer["state"] == "approved" and answer["ca"] == ca.pem
    assert transport.disconnecting
    # Plain TCP: no join (the worker could not have checked the pin).
    connection, transport = port(e, clock, tls=False)
    connection.dataReceived(encode({"code": "join", "token": token_for(e), "name": "pi02", "csr": request}))
    (bye,) = said(transport)
    assert (bye["code"], bye["refusal"], bye["reconnect"]) == ("bye", "token", False)


def test_a_master_on_the_secret_alone_takes_no_join(ca: ClusterCA, clock: Clock, tmp_path: Path) -> None:
    from pcci.wire import encode

    e = enrollment(ca, clock, tmp_path)
    connection, transport = port(e, clock, mode="secret")
    connection.dataReceived(encode({"code": "join", "token": token_for(e), "name": "w", "csr": "x"}))
    (bye,) = said(transport)
    assert bye["refusal"] == "token" and "secret" in bye["reason"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    token=st.one_of(st.text(max_size=90), st.just("VALID")),
    name=st.text(max_size=40),
    csr=st.one_of(st.text(max_size=300), st.just("VALID")),
    more=st.dictionaries(st.text(max_size=10), st.one_of(st.text(max_size=10), st.integers()), max_size=3),
    extra=st.binary(max_size=200),
)
def test_any_join_frame_is_answered_or_refused_and_never_raises(
    ca: ClusterCA, tmp_path: Path, token: str, name: str, csr: str, more: dict[str, Any], extra: bytes
) -> None:
    """The join is fuzzed like the rest of the port: an answer or a refusal, nothing else."""
    from twisted.logger import globalLogPublisher

    from pcci.wire import encode

    clock = Clock()
    clock.advance(START)
    directory = tmp_path / str(next(_runs))
    directory.mkdir()
    e = enrollment(ca, clock, directory)
    if token == "VALID":
        token = token_for(e, name="*")
    if csr == "VALID":
        csr = make_request(new_key(), "w")
    failures: list[dict[str, Any]] = []
    observer = lambda event: failures.append(event) if "log_failure" in event else None  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        connection, transport = port(e, clock)
        connection.dataReceived(encode({**more, "code": "join", "token": token, "name": name, "csr": csr}))
        connection.dataReceived(extra)
        connection.connectionLost(None)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert failures == []
    answers = said(transport) if transport.value().endswith(b"EOM") else []
    codes = [a["code"] for a in answers][:1]
    assert codes in ([], ["certificate"], ["bye"])
    if codes == ["certificate"]:
        assert result(e.store.get(name)).state == "approved"


_runs = iter(range(10**9))


def test_a_worker_asks_for_a_new_certificate_in_its_last_month_and_keeps_it(ca: ClusterCA, tmp_path: Path) -> None:
    """The worker's side: a welcome that offers identities, a certificate near its end, a renewal kept."""
    import datetime

    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    from pcci.identity import certificate_pem
    from pcci.wire import PROTOCOL_VERSION, encode
    from pcci.worker.connection import WorkerFactory
    from pcci.worker.jobs import JobTable

    identity = WorkerIdentity.fresh(tmp_path, "pi1")
    ending = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=70)  # 20 days left
    identity.keep(certificate_pem(ca.sign_worker(check_request(identity.request()), "pi1", ending)), ca.pem)
    clock = Clock()
    settings = WorkerSettings("pi1", heartbeat=1)
    factory = WorkerFactory(
        clock, settings, JobTable(clock, settings), identity, collect=lambda disk, jobs: succeed({})
    )
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 7000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    transport.clear()
    protocol.dataReceived(encode({"code": "welcome", "version": PROTOCOL_VERSION, "identities": True}))
    renew = [f for f in said(transport) if f["code"] == "renew"]
    assert len(renew) == 1
    request = check_request(renew[0]["csr"])
    assert key_fingerprint(request) == key_fingerprint(identity.certificate)
    fresh = ca.sign_worker(request, "pi1")
    protocol.dataReceived(encode({"code": "certificate", "certificate": certificate_pem(fresh), "ca": ca.pem,
                                  "state": "approved", "reason": ""}))
    assert factory.identity is identity and identity.certificate == fresh
    kept = WorkerIdentity.load(tmp_path, "pi1")
    assert kept is not None and kept.certificate == fresh
    assert not transport.disconnecting  # a renewal keeps the connection


def test_the_port_tells_tls_from_plain_by_the_first_byte_and_drops_the_silent(ca: ClusterCA, tmp_path: Path) -> None:
    from twisted.internet.address import IPv4Address
    from twisted.internet.interfaces import ITransport
    from twisted.internet.testing import StringTransport

    from pcci.master.cluster.state import ClusterState
    from pcci.master.links.admission import Gate
    from pcci.master.links.connection import WorkerConnection, WorkerPortFactory
    from pcci.master.links.tls import SniffingFactory, TLSOverSocket, WritesThrough
    from pcci.wire import encode

    clock = Clock()
    workers = WorkerPortFactory(ClusterState(clock), clock, Gate("identity", None, None, None))
    port = SniffingFactory(workers, ca.server_tls, clock)
    address = IPv4Address("TCP", "192.0.2.1", 5000)

    def connected() -> tuple[Any, StringTransport]:
        sniffer = port.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        sniffer.makeConnection(transport)
        return sniffer, transport

    plain, transport = connected()
    plain.dataReceived(encode({"code": "hello", "name": "w", "version": 4, "nonce": "n" * 32, "heartbeat": 5}))
    assert isinstance(plain.inner, WorkerConnection) and not plain.inner.tls
    assert b"identity only" in transport.value()  # and it is told why
    tls, transport = connected()
    tls.dataReceived(b"\x16\x03\x01\x00\x05hello")  # a TLS record (a broken one)
    assert isinstance(tls.inner, TLSOverSocket) and tls.inner.wrappedProtocol.tls
    assert isinstance(tls.inner.transport, WritesThrough) and ITransport.providedBy(tls.inner.transport)
    silent, transport = connected()
    clock.advance(workers.handshake_timeout)
    assert silent.inner is None and transport.disconnecting


def test_writes_through_fall_back_to_the_transport_beneath() -> None:
    from twisted.internet.testing import StringTransport

    from pcci.master.links.tls import WritesThrough

    beneath = StringTransport()
    through = WritesThrough(beneath)
    through.write(b"record")  # not a TCP socket: through the transport, in order
    through.writeSequence([b" and", b" more"])
    assert beneath.value() == b"record and more"
    assert through.getPeer() == beneath.getPeer()


def test_the_master_serves_a_new_certificate_every_month_while_it_runs(ca: ClusterCA) -> None:
    from pcci.master.cluster.state import ClusterState
    from pcci.master.links.admission import Gate
    from pcci.master.links.connection import WorkerPortFactory
    from pcci.master.links.tls import RENEW_EVERY, SniffingFactory

    clock = Clock()
    workers = WorkerPortFactory(ClusterState(clock), clock, Gate("identity", None, None, None))
    port = SniffingFactory(workers, ca.server_tls, clock)
    port.doStart()

    def served() -> x509.Certificate:
        return port.tls_options.certificate.to_cryptography()

    first = served()
    clock.advance(RENEW_EVERY)
    second = served()
    assert second.serial_number != first.serial_number
    assert second.issuer == first.issuer  # the same CA: workers trust it as they did
    port.doStop()
    clock.advance(RENEW_EVERY)
    assert served().serial_number == second.serial_number and not clock.getDelayedCalls()
