"""
Identities on the worker channel, as both daemons see them: keys,
certificate requests, fingerprints, join tokens and the TLS settings a
worker dials with.  The master's half (its CA, what it signs) is in
L{pcci.master.access.ca}.

Every master presents a certificate of the cluster's CA for
L{MASTER_HOSTNAME}, whatever address a worker dials; every worker presents
one for its own name (its subject's common name), which no master
certificate carries.  The crypto is the C{cryptography} package's and
OpenSSL's, through Twisted's TLS: nothing here is written by hand.

Python 3.9: a worker imports this.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pcci.files import write_atomically

#: The name every master's certificate is for, and every worker checks.
MASTER_HOSTNAME = "master.pcci"

#: Days a worker's certificate is good for, and the days before its end
#: when the worker asks for a new one.
WORKER_DAYS = 90
RENEW_DAYS = 30

#: Exit statuses of a worker whose join cannot succeed by trying again
#: (the systemd unit in examples/ does not restart on them).
EXIT_TOKEN = 10  # expired, used up, revoked or unknown
EXIT_PIN = 11  # the master is not the one the token pins
EXIT_NAME = 12  # the name is outside the token's pattern, or taken
EXIT_CSR = 13  # the master found the request malformed
EXIT_REVOKED = 14  # this worker's identity was revoked or denied

#: The code a master's refusal carries, and the status each makes.
EXIT_STATUSES = {"token": EXIT_TOKEN, "pin": EXIT_PIN, "name": EXIT_NAME, "csr": EXIT_CSR, "revoked": EXIT_REVOKED}

_TOKEN = re.compile(r"([a-z2-7]{8})\.([a-z2-7]{26})\.([A-Za-z0-9_-]{43})\Z")

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]


class IdentityError(Exception):
    """A key, certificate or token that cannot be used; the message says why."""


def _b32(size: int) -> str:
    return base64.b32encode(secrets.token_bytes(size)).decode().rstrip("=").lower()


def certificate_pin(certificate: x509.Certificate) -> str:
    """The SHA-256 of a (CA) certificate, URL-safe base64: what a join token carries."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def key_fingerprint(certificate: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """The SHA-256 of a certificate's public key, as OpenSSH writes one: C{SHA256:…}."""
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class JoinToken:
    """
    A join token as a person pastes it: C{ID.SECRET.PIN}, 79 characters.
    The master keeps C{ID} and the SHA-256 of C{SECRET}; C{PIN} is its
    CA's (see L{certificate_pin}), so the worker knows which master to trust before it
    sends anything.
    """

    id: str
    secret: str
    pin: str

    @classmethod
    def new(cls, ca_pin: str) -> JoinToken:
        return cls(_b32(5), _b32(16), ca_pin)

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        match = _TOKEN.match(text.strip())
        if match is None:
            raise IdentityError("not a join token (ID.SECRET.PIN, as pcci join-token create prints it)")
        return cls(*match.groups())

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.secret.encode()).hexdigest()

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}.{self.pin}"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def make_request(key: PrivateKey, name: str) -> str:
    """A certificate signing request for C{name}, signed by C{key}, in PEM."""
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def common_name(certificate: x509.Certificate) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else None


#: How a worker's certificate carries each label its token bound: a URI
#: among its subject's alternative names (C{pcci-label:rack=b}).
LABEL_URI = "pcci-label:"


def certificate_labels(certificate: x509.Certificate) -> dict[str, str]:
    """The labels a worker's certificate binds (see L{LABEL_URI})."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return {}
    bound = {}
    for uri in names.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(LABEL_URI) and "=" in uri:
            key, _, value = uri[len(LABEL_URI):].partition("=")
            bound[key] = value
    return bound


def is_worker_certificate(certificate: x509.Certificate) -> bool:
    """Whether a certificate is a worker's (for TLS clients), not a master's."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage and ExtendedKeyUsageOID.SERVER_AUTH not in usage


@dataclass
class WorkerIdentity:
    """
    A worker's key, its certificate and the CA's, kept in its state
    directory as C{identity/NAME.key}, C{NAME.crt} and C{NAME.ca.crt}
    (0600).  The key is made on the worker and never leaves it.
    """

    directory: Path
    name: str
    key: PrivateKey
    certificate: x509.Certificate | None = None
    ca: x509.Certificate | None = None
    _tls: tuple[x509.Certificate, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @staticmethod
    def paths(state_dir: Path, name: str) -> tuple[Path, Path, Path]:
        directory = state_dir / "identity"
        return directory / f"{name}.key", directory / f"{name}.crt", directory / f"{name}.ca.crt"

    @classmethod
    def load(cls, state_dir: Path, name: str) -> WorkerIdentity | None:
        """The identity kept for C{name}; None if it has no certificate yet."""
        key_path, certificate_path, ca_path = cls.paths(state_dir, name)
        if not certificate_path.exists():
            return None
        try:
            key: Any = serialization.load_pem_private_key(key_path.read_bytes(), None)
            certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
            ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        except (OSError, ValueError) as e:
            raise IdentityError(f"cannot read this worker's identity in {key_path.parent}: {e}") from None
        if common_name(certificate) != name:
            raise IdentityError(
                f"{certificate_path} is the identity of {common_name(certificate)!r}, not {name!r}"
            )
        return cls(state_dir / "identity", name, key, certificate, ca)

    @classmethod
    def fresh(cls, state_dir: Path, name: str) -> WorkerIdentity:
        """A new key, kept at once: a join that fails after sending its request loses nothing."""
        key_path = cls.paths(state_dir, name)[0]
        try:
            key: Any = serialization.load_pem_private_key(key_path.read_bytes(), None)
        except (OSError, ValueError):
            key = new_key()
            key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(key_path, key_pem(key).decode())
        return cls(state_dir / "identity", name, key)

    def request(self) -> str:
        return make_request(self.key, self.name)

    def keep(self, certificate_text: str, ca_text: str) -> None:
        """Take a certificate the master signed (and its CA's), and write both."""
        try:
            certificate = x509.load_pem_x509_certificate(certificate_text.encode())
            ca = x509.load_pem_x509_certificate(ca_text.encode())
        except ValueError as e:
            raise IdentityError(f"the master sent a certificate that is not one: {e}") from None
        if certificate.public_key() != self.key.public_key() or common_name(certificate) != self.name:
            raise IdentityError("the master sent a certificate for another key or name")
        self.certificate, self.ca = certificate, ca
        self.save()

    def save(self) -> None:
        """Write the certificate and the CA's beside the key."""
        assert self.certificate is not None and self.ca is not None
        _, certificate_path, ca_path = self.paths(self.directory.parent, self.name)
        write_atomically(ca_path, certificate_pem(self.ca))
        write_atomically(certificate_path, certificate_pem(self.certificate))

    def set_aside(self) -> None:
        """
        The master revoked this identity: its certificate is kept as
        C{NAME.crt.revoked}, so that C{--join} with a new token joins again
        (with the same key).
        """
        _, certificate_path, _ = self.paths(self.directory.parent, self.name)
        if certificate_path.exists():
            certificate_path.replace(certificate_path.with_name(certificate_path.name + ".revoked"))
        self.certificate = None

    def needs_renewal(self, now: float) -> bool:
        if self.certificate is None:
            return False
        ends = self.certificate.not_valid_after_utc.timestamp()
        return ends - now < RENEW_DAYS * 86400

    def client_tls(self) -> Any:
        """
        Twisted's client TLS settings: this identity, and the cluster's CA as
        the only trust.  Made once per certificate (an OpenSSL context is
        costly to make; one serves every connection).
        """
        from twisted.internet import ssl

        assert self.certificate is not None and self.ca is not None
        if self._tls is None or self._tls[0] is not self.certificate:
            own = ssl.PrivateCertificate.loadPEM(certificate_pem(self.certificate).encode() + key_pem(self.key))
            options = ssl.optionsForClientTLS(
                MASTER_HOSTNAME,
                trustRoot=ssl.Certificate.loadPEM(certificate_pem(self.ca).encode()),
                clientCertificate=own,
            )
            self._tls = (self.certificate, options)
        return self._tls[1]


def check_pinned_chain(chain: list[x509.Certificate], expected: str) -> None:
    """
    Whether a master's chain (leaf first) holds the CA C{expected} pins and
    a leaf that CA signed for L{MASTER_HOSTNAME}; the TLS handshake proved
    the master holds the leaf's key.

    @raise IdentityError: it does not; nothing may be sent to that master.
    """
    if not chain:
        raise IdentityError("the master sent no certificate")
    leaf = chain[0]
    for ca in chain[1:]:
        if certificate_pin(ca) != expected:
            continue
        try:
            leaf.verify_directly_issued_by(ca)
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound) as e:
            raise IdentityError(f"the master's certificate is not its CA's: {e}") from None
        if MASTER_HOSTNAME not in names.get_values_for_type(x509.DNSName):
            raise IdentityError(f"the master's certificate is not for {MASTER_HOSTNAME}")
        return
    raise IdentityError(
        "the master's CA does not match the token's pin: not the master that made"
        " the token (or someone in between); nothing was sent"
    )
