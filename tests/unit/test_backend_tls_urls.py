"""Backends over TLS, as the configuration reads them: ``rediss://`` and its ``ssl_*``
options in MQ_URL, libpq's ``sslmode`` and certificate files in DB_URL (SPEC §9).
Refusals are one line naming the variable, never echoing a password."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pytest

from ironfunctions.config import Config
from ironfunctions.errors import ConfigError
from ironfunctions.mq.redis_url import DEFAULT_PREFIX, RedisTLS, RedisURL, parse_redis_url
from ironfunctions.storage.pgurl import postgres_files


def make(env: Mapping[str, str]) -> Config:
    return Config.from_sources({}, env, "/srv", cpu_count=2, host_memory_mb=24000)


def refusal(env: Mapping[str, str]) -> str:
    with pytest.raises(ConfigError) as e:
        make(env)
    message = str(e.value)
    assert "\n" not in message and "s3cret" not in message
    return message


@pytest.fixture
def ca(tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")  # read as a file here, parsed when the queue is built
    return str(path)


# -- Redis


def test_redis_url_is_in_the_clear_and_rediss_verifies_by_default() -> None:
    assert parse_redis_url("redis://h") == RedisURL("h", 6379, 0, None, None, DEFAULT_PREFIX, None)
    u = parse_redis_url("rediss://:s3cret@cache.example:6380/2?prefix=p")
    assert (u.host, u.port, u.db, u.password, u.prefix) == ("cache.example", 6380, 2, "s3cret", "p")
    assert u.tls == RedisTLS(ca_certs=None, verify=True, certfile=None, keyfile=None)


def test_rediss_takes_redis_py_option_names() -> None:
    u = parse_redis_url(
        "rediss://h?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
    )
    assert u.tls == RedisTLS("/etc/ca.pem", True, "/c.pem", "/k.pem")
    assert parse_redis_url("rediss://h?ssl_cert_reqs=none").tls == RedisTLS(verify=False)
    assert parse_redis_url("rediss://h?ssl_cert_reqs=NONE").tls == RedisTLS(verify=False)


@pytest.mark.parametrize(
    "url,says",
    [
        ("rediss://:s3cret@h?ssl_ca_cert=/ca.pem", "unknown parameter ssl_ca_cert"),
        ("rediss://:s3cret@h?verify=no", "unknown parameter verify"),
        ("redis://:s3cret@h?ssl_ca_certs=/ca.pem", "need rediss://"),
        ("rediss://:s3cret@h?ssl_cert_reqs=optional", "ssl_cert_reqs must be one of required, none"),
        ("rediss://:s3cret@h?ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
        ("rediss://:s3cret@h:port", "expected redis[s]://"),
        ("redisss://:s3cret@h", "expected memory://"),
    ],
)
def test_bad_mq_urls_are_refused_in_one_line_naming_MQ_URL(url: str, says: str) -> None:
    message = refusal({"MQ_URL": url})
    assert message.startswith("MQ_URL: ") and says in message


def test_rediss_files_must_be_readable_at_start(ca: str, tmp_path: Path) -> None:
    assert make({"MQ_URL": f"rediss://h?ssl_ca_certs={ca}"}).mq_url.startswith("rediss://")
    message = refusal({"MQ_URL": f"rediss://:s3cret@h?ssl_ca_certs={tmp_path}/nope.pem"})
    assert message == f"MQ_URL: ssl_ca_certs: cannot read {tmp_path}/nope.pem: No such file or directory"
    message = refusal({"MQ_URL": f"rediss://h?ssl_ca_certs={ca}&ssl_certfile={ca}&ssl_keyfile={tmp_path}/k"})
    assert message.startswith("MQ_URL: ssl_keyfile: cannot read")


def test_a_ca_file_that_holds_no_certificate_is_refused_when_the_queue_is_built(ca: str) -> None:
    from ironfunctions.mq.redis import RedisQueue

    with pytest.raises(ConfigError, match="MQ_URL: ssl_ca_certs: no PEM certificate in"):
        RedisQueue.from_url(f"rediss://h?ssl_ca_certs={ca}", reactor=None)


# -- Postgres


def test_libpq_tls_parameters_pass_and_name_their_files() -> None:
    url = "postgres://u:s3cret@db/x?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem&sslcrl=/crl"
    assert postgres_files("DB_URL", url) == [
        ("sslrootcert", "/ca.pem"), ("sslcert", "/c.pem"), ("sslkey", "/k.pem"), ("sslcrl", "/crl"),
    ]
    assert postgres_files("DB_URL", "postgres://db/x?sslrootcert=system") == []
    assert postgres_files("DB_URL", "postgres://db/x") == []


@pytest.mark.parametrize(
    "url,says",
    [
        ("postgres://u:s3cret@db/x?sslmode=verify_full", "sslmode must be one of disable, allow, prefer,"),
        ("postgres://u:s3cret@db/x?ssl_mode=require", 'invalid URI query parameter: "ssl_mode"'),
        ("postgres://u:s3cret@db/x?sslmode=require&sslrootcert=system", "sslrootcert=system needs sslmode=verify-full"),
        ("postgres://u:s3cret@db/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
         "sslrootcert: cannot read /nonexistent/ca.pem"),
        ("postgres://u:s3cret@db/x?sslcert=/nonexistent/c.pem", "sslcert: cannot read /nonexistent/c.pem"),
    ],
)
def test_bad_db_urls_are_refused_in_one_line_naming_DB_URL(url: str, says: str) -> None:
    message = refusal({"DB_URL": url})
    assert message.startswith("DB_URL: ") and says in message


def test_a_verify_full_db_url_with_a_readable_ca_is_accepted(ca: str) -> None:
    url = f"postgresql://u@db.example:5432/x?sslmode=verify-full&sslrootcert={ca}"
    assert make({"DB_URL": url}).db_url == url
