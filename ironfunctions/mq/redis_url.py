"""``MQ_URL`` for Redis, parsed (pure): ``redis://`` in the clear, ``rediss://`` over TLS.

``redis[s]://[[user]:password@]host[:port][/db][?prefix=x&ssl_...]``. The TLS options
take redis-py's names, so a URL that works with redis-py works here:

- ``ssl_ca_certs=/path/ca.pem``: the CAs that may sign the server's certificate
  (PEM, one or more); without it, the system's trust store.
- ``ssl_cert_reqs=required`` (the default) verifies the server's certificate chain
  *and* that it names ``host`` (a DNS name or an IP address in its subject alternative
  names). ``none`` turns both checks off: only on purpose (it is logged as a warning at
  every start), since anyone on the path can then read and change the queue.
- ``ssl_certfile=/path/cert.pem`` and ``ssl_keyfile=/path/key.pem``: a client
  certificate, for a server started with ``tls-auth-clients yes``.

Anything else in the query is refused, as are ``ssl_*`` options on a ``redis://`` URL
(they would be silently ignored, and the queue would run in the clear).
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from ironfunctions.errors import ConfigError

DEFAULT_PREFIX = "ironfunctions:mq"
DEFAULT_PORT = 6379
SCHEMES = ("redis", "rediss")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_cert_reqs", "ssl_certfile", "ssl_keyfile")
CERT_REQS = ("required", "none")
_SHAPE = "redis[s]://[[user]:password@]host[:port][/db][?prefix=x&ssl_ca_certs=/path/ca.pem...]"


@attrs.frozen
class RedisTLS:
    """How to talk TLS to the server. ``ca_certs`` None: the system's trust store."""

    ca_certs: str | None = None
    verify: bool = True
    certfile: str | None = None
    keyfile: str | None = None


@attrs.frozen
class RedisURL:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = attrs.field(default=None, repr=False)
    username: str | None = None
    prefix: str = DEFAULT_PREFIX
    tls: RedisTLS | None = None  # None: in the clear (redis://)


def parse_redis_url(url: str, name: str = "MQ_URL") -> RedisURL:
    """Parse ``url``; raise ``ConfigError`` with one line naming ``name`` (the message
    never repeats the URL: it may hold a password)."""
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
        db_text = parts.path.lstrip("/")
        db = int(db_text) if db_text else 0
        query = parse_qs(parts.query, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError(f"{name}: expected {_SHAPE} (bad port, database number or query)") from None
    if parts.scheme not in SCHEMES or not parts.hostname or db < 0:
        raise ConfigError(f"{name}: expected {_SHAPE}")
    unknown = sorted(set(query) - {"prefix", *TLS_OPTIONS})
    if unknown:
        known = ", ".join(("prefix", *TLS_OPTIONS))
        raise ConfigError(f"{name}: unknown parameter {', '.join(unknown)} (known: {known})")
    options = {key: values[-1] for key, values in query.items()}
    tls = _tls(options, parts.scheme, name)
    return RedisURL(
        host=parts.hostname,
        port=port,
        db=db,
        password=unquote(parts.password) if parts.password else None,
        username=unquote(parts.username) if parts.username else None,
        prefix=options.get("prefix") or DEFAULT_PREFIX,
        tls=tls,
    )


def _tls(options: dict[str, str], scheme: str, name: str) -> RedisTLS | None:
    given = sorted(k for k in options if k in TLS_OPTIONS)
    if scheme == "redis":
        if given:
            raise ConfigError(f"{name}: {', '.join(given)} need rediss:// (TLS); redis:// is in the clear")
        return None
    reqs = options.get("ssl_cert_reqs", "required").lower()
    if reqs not in CERT_REQS:
        raise ConfigError(f"{name}: ssl_cert_reqs must be one of {', '.join(CERT_REQS)}, got {reqs!r}")
    certfile, keyfile = options.get("ssl_certfile") or None, options.get("ssl_keyfile") or None
    if keyfile and not certfile:
        raise ConfigError(f"{name}: ssl_keyfile needs ssl_certfile")
    return RedisTLS(
        ca_certs=options.get("ssl_ca_certs") or None,
        verify=reqs == "required",
        certfile=certfile,
        keyfile=keyfile,
    )
