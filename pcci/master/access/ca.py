"""
The cluster's certificate authority: made at a master's first start in its
state directory (C{ca.key}, 0600, and C{ca.crt}), it signs each master's
certificate (a new one at every start) and each worker's (from the
worker's own request).  Masters sharing a store share the CA by a copy of
both files: see docs/security.md, "The cluster CA".
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl

from pcci.files import write_atomically
from pcci.identity import (
    LABEL_URI,
    MASTER_HOSTNAME,
    WORKER_DAYS,
    IdentityError,
    PrivateKey,
    certificate_pem,
    certificate_pin,
    key_pem,
    new_key,
)

CA_KEY_FILE = "ca.key"
CA_CERTIFICATE_FILE = "ca.crt"

#: Years the CA is good for.
CA_YEARS = 10

#: Days a master's certificate is good for: made again at every start, and
#: every month while it runs (L{pcci.master.links.tls.SniffingFactory}).
MASTER_DAYS = 365

#: Requests signed are for keys of these kinds and sizes.
EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
RSA_MIN_BITS = 2048

#: Minutes a new certificate is valid before now: clocks differ a little.
SKEW = datetime.timedelta(minutes=5)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def check_request(text: str) -> x509.CertificateSigningRequest:
    """
    A worker's certificate request, read and checked: its signature, and a
    key of a kind signed here.

    @raise IdentityError: it is not one, or not one to sign.
    """
    try:
        request = x509.load_pem_x509_csr(text.encode())
        valid = request.is_signature_valid
        key: Any = request.public_key()
    except (ValueError, TypeError, UnicodeEncodeError) as e:
        raise IdentityError(f"not a certificate signing request: {e}") from None
    if not valid:
        raise IdentityError("the certificate request's signature is wrong")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, EC_CURVES):
            raise IdentityError(f"a key on curve {key.curve.name}: P-256 or P-384 only")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < RSA_MIN_BITS:
            raise IdentityError(f"an RSA key of {key.key_size} bits: {RSA_MIN_BITS} at least")
    else:
        raise IdentityError("a key of a kind not signed here: EC (P-256, P-384) or RSA")
    return request


class ClusterCA:
    """The CA's key and certificate, and what it signs."""

    def __init__(self, key: PrivateKey, certificate: x509.Certificate) -> None:
        self.key = key
        self.certificate = certificate
        #: What join tokens carry: the SHA-256 of the CA's certificate.
        self.pin = certificate_pin(certificate)
        self.pem = certificate_pem(certificate)

    @classmethod
    def open(cls, state_dir: Path, now: datetime.datetime | None = None) -> ClusterCA:
        """
        The CA of C{state_dir}, made there if it has none.

        @raise IdentityError: one file of the two is missing, or cannot be read.
        """
        key_path, certificate_path = state_dir / CA_KEY_FILE, state_dir / CA_CERTIFICATE_FILE
        if not key_path.exists() and not certificate_path.exists():
            ca = cls.create(now)
            write_atomically(key_path, key_pem(ca.key).decode())
            write_atomically(certificate_path, ca.pem, mode=0o644)
            return ca
        try:
            key: Any = serialization.load_pem_private_key(key_path.read_bytes(), None)
            certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
        except (OSError, ValueError, TypeError) as e:
            raise IdentityError(
                f"cannot read the cluster CA ({key_path}, {certificate_path}): {e}"
            ) from None
        if key.public_key() != certificate.public_key():
            raise IdentityError(f"{key_path} is not the key of {certificate_path}")
        return cls(key, certificate)

    @classmethod
    def create(cls, now: datetime.datetime | None = None) -> ClusterCA:
        now = now or datetime.datetime.now(datetime.timezone.utc)
        key = new_key()
        name = _name("pcci cluster CA")
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW)
            .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def _sign(
        self, subject: str, public_key: Any, days: int, usage: x509.ObjectIdentifier,
        now: datetime.datetime, names: list[x509.GeneralName],
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def sign_worker(
        self, request: x509.CertificateSigningRequest, name: str, now: datetime.datetime | None = None,
        days: int = WORKER_DAYS, labels: Mapping[str, str] | None = None,
    ) -> x509.Certificate:
        """
        A worker's certificate: C{name} (whatever the request says) for the
        request's key, binding C{labels} (its join token's: see L{LABEL_URI}).
        """
        now = now or datetime.datetime.now(datetime.timezone.utc)
        bound: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(f"{LABEL_URI}{key}={value}") for key, value in sorted((labels or {}).items())
        ]
        return self._sign(name, request.public_key(), days, ExtendedKeyUsageOID.CLIENT_AUTH, now, bound)

    def server_tls(self, now: datetime.datetime | None = None) -> ssl.CertificateOptions:
        """
        This master's TLS settings: a new key and certificate for
        L{MASTER_HOSTNAME}, the CA sent along (a joining worker checks it
        against its pin), and workers' certificates asked for, verified
        against the CA, but not required (a worker joining has none yet).
        """
        now = now or datetime.datetime.now(datetime.timezone.utc)
        key = new_key()
        certificate = self._sign(
            MASTER_HOSTNAME, key.public_key(), MASTER_DAYS, ExtendedKeyUsageOID.SERVER_AUTH, now,
            [x509.DNSName(MASTER_HOSTNAME)],
        )
        own = ssl.PrivateCertificate.loadPEM(certificate_pem(certificate).encode() + key_pem(key))
        ca = ssl.Certificate.loadPEM(self.pem.encode())
        return ssl.CertificateOptions(
            privateKey=own.privateKey.original,
            certificate=own.original,
            extraCertChain=[ca.original],
            verify=True,
            caCerts=[ca.original],
            requireCertificate=False,
            # Tickets would let a worker resume without its certificate checked again.
            enableSessionTickets=False,
            enableSessions=False,
        )
