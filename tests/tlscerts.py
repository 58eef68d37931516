"""Throwaway certificate authorities for the TLS tests, made with ``cryptography``.

``make_ca(folder, name)`` writes a self-signed CA; ``ca.issue(...)`` a server (or client)
certificate signed by it, for the DNS names and IP addresses given. Every file is PEM;
keys are written with mode 0600 (Postgres refuses a key others can read).
"""

from __future__ import annotations

import datetime
import ipaddress
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@attrs.frozen
class Issued:
    """A certificate and its key, as files."""

    cert: str
    key: str


@attrs.frozen
class CA:
    folder: str
    name: str
    cert: str  # the CA certificate, what clients trust
    _key: ec.EllipticCurvePrivateKey
    _certificate: x509.Certificate

    def issue(self, name: str, dns: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",),
              client: bool = False) -> Issued:
        """A certificate for ``dns`` and ``ips`` (its subject alternative names) signed by
        this CA, written to ``<folder>/<name>.crt`` and ``.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            _builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), self._certificate.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(_write_cert(self.folder, name, cert), _write_key(self.folder, name, key))


def make_ca(folder: str, name: str = "ca") -> CA:
    """A new self-signed CA, written to ``<folder>/<name>.crt``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ironfunctions test {name}")])
    cert = (
        _builder(subject, subject, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CA(folder, name, _write_cert(folder, name, cert), key, cert)


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _write_cert(folder: str, name: str, cert: x509.Certificate) -> str:
    path = os.path.join(folder, f"{name}.crt")
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(folder: str, name: str, key: ec.EllipticCurvePrivateKey) -> str:
    path = os.path.join(folder, f"{name}.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return path
