"""The client endpoint the Redis queue connects through: TCP for ``redis://``, TLS over
TCP for ``rediss://`` (``redis_url.RedisTLS`` says how).

TLS verifies by default: ``optionsForClientTLS`` checks the server's chain against the
given CAs (or the system's) and that the certificate names the host of the URL (DNS name
or IP address). ``ssl_cert_reqs=none`` turns that off, with a warning at every start.

A handshake that fails (unknown CA, wrong name, expired certificate, a server that does
not speak TLS) is retried like a refused connection, and logged as one warning line naming the server and the reason, at most
once a minute per reason: txredisapi reconnects every couple of seconds and would
otherwise say nothing but "not connected".
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IHandshakeListener, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from ironfunctions.errors import ConfigError
from ironfunctions.mq.redis_url import RedisTLS

log = Logger()

# How often the same handshake failure may be logged again.
REPEAT_LOG_S = 60.0


def redis_endpoint(reactor: Any, host: str, port: int, timeout: float, creator: Any | None) -> Any:
    """The endpoint to ``host:port``; over TLS when ``creator`` (``client_creator``)
    is given."""
    tcp = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if creator is None:
        return tcp
    return _TLSEndpoint(tcp, creator, f"{host}:{port}", reactor)


def client_creator(host: str, tls: RedisTLS) -> Any:
    """The pyOpenSSL connection creator (or, unverified, context factory) for ``tls``:
    made once, when the queue is built, so that an unreadable file is a ``ConfigError``
    (naming MQ_URL) at start, not a connection that never comes up."""
    client = _client_certificate(tls) if tls.certfile else None
    if not tls.verify:
        log.warn(
            "MQ_URL: ssl_cert_reqs=none: the certificate of the Redis server {host} is NOT verified;"
            " anyone on the network path can read and change the queue",
            host=host,
        )
        if client is None:
            return ssl.CertificateOptions(verify=False)
        return ssl.CertificateOptions(verify=False, privateKey=client.privateKey.original,
                                      certificate=client.original)
    trust = _trust_root(tls.ca_certs) if tls.ca_certs else ssl.platformTrust()
    return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"MQ_URL: {option}: cannot read {path}: {e.strerror}") from None


def _trust_root(path: str) -> Any:
    """Every certificate of the PEM file ``path`` (a CA bundle may hold several)."""
    try:
        found = x509.load_pem_x509_certificates(_read(path, "ssl_ca_certs"))
    except ValueError:
        raise ConfigError(f"MQ_URL: ssl_ca_certs: no PEM certificate in {path}") from None
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in found])


def _client_certificate(tls: RedisTLS) -> Any:
    assert tls.certfile is not None
    pem = _read(tls.certfile, "ssl_certfile")
    if tls.keyfile:
        pem += b"\n" + _read(tls.keyfile, "ssl_keyfile")
    try:
        return ssl.PrivateCertificate.loadPEM(pem)
    except (SSL.Error, ValueError) as e:
        raise ConfigError(f"MQ_URL: ssl_certfile/ssl_keyfile: not a PEM certificate and its key ({e})") from None


class _Handshakes:
    """The failures one endpoint has logged, to log each at most every REPEAT_LOG_S."""

    def __init__(self, where: str, reactor: Any) -> None:
        self.where = where
        self._reactor = reactor
        self._logged: dict[str, float] = {}

    def failed(self, reason: Failure) -> None:
        why = describe_tls_failure(reason)
        now = self._reactor.seconds()
        if now - self._logged.get(why, -REPEAT_LOG_S) < REPEAT_LOG_S:
            return
        self._logged[why] = now
        log.warn("Redis TLS connection to {server} failed: {error}", server=self.where, error=why)


def describe_tls_failure(reason: Failure) -> str:
    """One line: OpenSSL's reasons (``certificate verify failed``, ...), a host name the
    certificate does not carry, or the message."""
    error = reason.value
    if type(error).__name__ == "VerificationError":  # service_identity's, if Twisted uses it
        return "the server's certificate does not match the host name"
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        parts = [str(entry[-1]) for entry in error.args[0] if isinstance(entry, tuple) and entry]
        if parts:
            return "; ".join(parts)
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@implementer(IHandshakeListener)
class _AfterHandshake(ProtocolWrapper):
    """Between the TLS layer and the Redis protocol: connects the Redis protocol only
    once the handshake is done, and logs a connection lost before that.

    Why wait: Twisted's TLS layer connects the protocol it wraps as soon as TCP is up, so
    txredisapi would send SELECT into a handshake that may fail, and a SELECT that
    fails makes it stop reconnecting for good (it takes that for a wrong database
    number): one bad handshake (a certificate being rotated) would take the queue down
    until a restart, where a refused TCP connection is retried."""

    factory: _AfterHandshakeFactory

    def __init__(self, factory: _AfterHandshakeFactory, wrapped: Any) -> None:
        super().__init__(factory, wrapped)
        self._handshaken = False

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 (Twisted API)
        # ProtocolWrapper's, less connecting the wrapped protocol.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]

    def handshakeCompleted(self) -> None:  # noqa: N802 (Twisted API)
        self._handshaken = True
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]  # it is the transport

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802 (Twisted API)
        if not self._handshaken:
            self.factory.handshakes.failed(reason)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class _AfterHandshakeFactory(WrappingFactory["_AfterHandshake"]):
    protocol = _AfterHandshake

    def __init__(self, wrapped: IProtocolFactory, handshakes: _Handshakes) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.handshakes = handshakes


@implementer(IStreamClientEndpoint)
class _TLSEndpoint:
    """TLS over another endpoint, like ``wrapClientTLS``, but also for the unverified
    ``CertificateOptions`` (an old-style context factory), and with ``_AfterHandshake``
    between TLS and the protocol."""

    def __init__(self, wrapped: Any, creator: Any, where: str, reactor: Any) -> None:
        self._wrapped = wrapped
        self._creator = creator
        self._handshakes = _Handshakes(where, reactor)

    def connect(self, protocol_factory: IProtocolFactory) -> Any:
        gate = _AfterHandshakeFactory(protocol_factory, self._handshakes)
        tls = TLSMemoryBIOFactory(self._creator, True, gate)
        d = self._wrapped.connect(tls)
        return d.addCallback(lambda protocol: protocol.wrappedProtocol.wrappedProtocol)
