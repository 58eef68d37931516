"""Fixtures shared by every test layer.

Real backends (Postgres, Redis, Docker) are started by session fixtures in
``tests/servers.py``; a backend that cannot start is a test failure, never a skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Coroutine, Iterator, TypeVar

import pytest
import pytest_twisted
from twisted.internet import defer

from ironfunctions.calls.interface import ICallStore
from ironfunctions.datastore import Stores, stores_from_url
from ironfunctions.datastore.interface import IDatastore
from ironfunctions.mq import queue_from_url
from ironfunctions.mq.interface import IMessageQueue
from tests.daemon import daemon, daemon_factory  # noqa: F401 (fixtures)
from tests.servers import (  # noqa: F401 (fixtures)
    RedisServer, postgres_cluster, postgres_db, postgres_url, redis_server, rediss_server,
)

DATASTORE_KINDS = ["memory", "sqlite", "postgres"]
QUEUE_KINDS = ["memory", "sqlite", "redis", "rediss"]  # rediss: Redis over TLS

_T = TypeVar("_T")


def _block(coro: Coroutine[Any, Any, _T]) -> _T:
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(coro))


@pytest.fixture(params=DATASTORE_KINDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    """Started, empty stores (datastore and call store) of every kind the project has."""
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
    stores = stores_from_url(url, reactor)
    _block(stores.datastore.start())
    yield stores
    _block(stores.datastore.close())


@pytest.fixture
def datastore(stores: Stores) -> IDatastore:
    """A started, empty datastore of every kind (from ``stores``)."""
    return stores.datastore


@pytest.fixture
def calls(stores: Stores) -> ICallStore:
    """A started, empty call store of every kind (from ``stores``)."""
    return stores.calls


def queue_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty queue of ``kind`` for one test."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/mq.db"
    if kind in ("redis", "rediss"):
        server: RedisServer = request.getfixturevalue(f"{kind}_server")
        server.flush()  # no state leaks between tests
        return server.url()
    raise AssertionError(kind)  # pragma: no cover


@pytest.fixture(params=QUEUE_KINDS)
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[IMessageQueue]:
    """A started, empty message queue of every kind the project has."""
    from twisted.internet import reactor

    q = queue_from_url(queue_url(request.param, request, tmp_path), reactor)
    _block(q.start())
    yield q
    _block(q.close())
