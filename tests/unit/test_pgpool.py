"""Pure helpers of the Postgres pool adapter (no server needed)."""

from __future__ import annotations

import psycopg2
from twisted.internet.defer import FirstError
from twisted.python.failure import Failure

from ironfunctions.storage.pgpool import describe


def test_describe_takes_the_first_line_of_libpq_messages() -> None:
    error = psycopg2.OperationalError("connection to server failed: Connection refused\n\tIs the server running?\n")
    assert describe(error) == "connection to server failed: Connection refused"
    assert describe(psycopg2.InterfaceError()) == "InterfaceError"


def test_describe_unwraps_FirstError_from_opening_the_pool() -> None:
    """txpostgres opens its pool with a DeferredList: the log names the cause, not a repr
    of a Failure with a traceback in it."""
    cause = psycopg2.OperationalError("Connection refused\n")
    assert describe(FirstError(Failure(cause), 0)) == "Connection refused"
