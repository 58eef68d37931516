"""Fixtures shared by every test layer.

Real backends (Postgres, Redis, Docker) are started by session fixtures in
``tests/servers.py``; a backend that cannot start is a test failure, never a skip.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from ironfunctions.datastore import datastore_from_url
from tests.daemon import daemon, daemon_factory  # noqa: F401 (fixtures)
from tests.servers import postgres_cluster, postgres_db, postgres_url  # noqa: F401 (fixtures)

DATASTORE_KINDS = ["memory", "sqlite", "postgres"]


def _block(coro):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(coro))


@pytest.fixture(params=DATASTORE_KINDS)
def datastore(request, tmp_path):
    """A started, empty datastore of every kind the project has."""
    from twisted.internet import reactor

    kind = request.param
    if kind == "memory":
        url = "memory://"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path}/ds.db"
    elif kind == "postgres":
        # A fresh database per test (dropped with the fixture): no state leaks between tests.
        url = request.getfixturevalue("postgres_db")
    else:  # pragma: no cover
        raise AssertionError(kind)
    ds = datastore_from_url(url, reactor)
    _block(ds.start())
    yield ds
    _block(ds.close())
