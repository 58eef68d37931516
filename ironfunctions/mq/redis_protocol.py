"""Redis connections that keep trying (txredisapi's protocols, one step changed).

txredisapi sends AUTH and SELECT when a connection is made, and if either fails it calls
``stopTrying`` on the connection's slot: that slot never reconnects again. A failure
there is usually not a refusal but a Redis going away under us (a restart closes the
connection between the TCP connect and the reply to SELECT), and then the queue stayed
down until the daemon restarted. Here any such failure just drops the connection: the
slot reconnects with its back-off, and the reason is logged once per outage (a wrong
password stays visible in the log, and is picked up without a restart once fixed).
"""

from __future__ import annotations

from typing import Any

import txredisapi  # untyped: ignore_missing_imports in mypy.ini
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from ironfunctions.ratelimit import OutageLog

log = Logger()


class KeepTrying:
    """Mixin for a ``txredisapi.RedisProtocol`` subclass (first in the bases)."""

    # Set by the factory: the OutageLog shared by its connections (None: not logged).
    setup_failures: OutageLog | None = None

    @inlineCallbacks
    def connectionMade(self) -> Any:  # noqa: N802 (Twisted API)
        this: Any = self
        try:
            if this.password is not None:
                response = yield this.auth(this.password, this.username)
                if isinstance(response, txredisapi.ResponseError):
                    raise response
            if this.dbid is not None:
                response = yield this.select(this.dbid)
                if isinstance(response, txredisapi.ResponseError):
                    raise response
        except Exception as e:
            failures = this.factory.setup_failures
            if failures is not None:
                failures.failed(error=str(e) or type(e).__name__)
            this.transport.loseConnection()  # the slot reconnects with its back-off
            return None
        failures = this.factory.setup_failures
        if failures is not None:
            failures.recovered()
        this.connected = 1
        this._ready = True
        this._waiting_for_connect, waiting = [], this._waiting_for_connect
        for d in waiting:
            d.callback(this)
        return None


class Protocol(KeepTrying, txredisapi.RedisProtocol):  # type: ignore[misc]
    """The queue's pool connections."""


def keep_trying(factory: Any, clock: Any, what: str) -> Any:
    """``factory`` (a ``txredisapi.RedisFactory``) with its setup failures logged once
    per outage under ``what``."""
    factory.setup_failures = OutageLog(
        log, clock,
        started=f"Redis {what}: connection setup failed ({{error}}); retrying",
        ongoing=f"Redis {what}: connection setup still failing ({{error}}): {{failures}} tries in {{seconds}}s",
        ended=f"Redis {what}: connection setup works again after {{seconds}}s",
    )
    return factory

