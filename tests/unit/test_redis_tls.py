"""The Redis TLS endpoint's log of failed handshakes: one clear line per reason, at most
once a minute (txredisapi retries every couple of seconds, on every pooled connection)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from ironfunctions.mq.redis_tls import REPEAT_LOG_S, _Handshakes, describe_tls_failure

VERIFY_FAILED = SSL.Error([("SSL routines", "", "certificate verify failed")])


@pytest.fixture
def logged() -> Iterator[list[str]]:
    lines: list[str] = []

    @implementer(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def test_openssl_reasons_are_described_in_one_line() -> None:
    assert describe_tls_failure(Failure(VERIFY_FAILED)) == "certificate verify failed"
    assert describe_tls_failure(Failure(ValueError("first\nsecond"))) == "first"


def test_each_reason_is_logged_once_a_minute(logged: list[str]) -> None:
    clock = Clock()
    handshakes = _Handshakes("redis.internal:6380", clock)
    for _ in range(5):  # the pool's connections all failing at once
        handshakes.failed(Failure(VERIFY_FAILED))
    handshakes.failed(Failure(ConnectionError("reset")))
    assert logged == [
        "Redis TLS connection to redis.internal:6380 failed: certificate verify failed",
        "Redis TLS connection to redis.internal:6380 failed: reset",
    ]
    clock.advance(REPEAT_LOG_S - 1)
    handshakes.failed(Failure(VERIFY_FAILED))
    assert len(logged) == 2
    clock.advance(1)
    handshakes.failed(Failure(VERIFY_FAILED))
    assert len(logged) == 3 and logged[2].endswith("certificate verify failed")
